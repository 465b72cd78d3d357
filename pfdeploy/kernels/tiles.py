"""The fused kernel's autotuning tile configurations per dtype, and the shared memory each one needs.

Plain data and pure functions (no Triton import), so that the configurations are checked on machines
without Triton or a GPU; pfdeploy/kernels/pool_gemm.py turns them into `triton.Config`s.

Shared memory (why FP32 has its own configurations). The kernel's K loop loads nine shifted windows of
the A tile (BLOCK_M x BLOCK_K) and one W tile (BLOCK_K x BLOCK_N). With `num_stages` > 1 Triton's
software pipeliner may stage every one of those loads in shared memory, one buffer per stage but the
last, so a configuration can need

    (num_stages - 1) * (9 * BLOCK_M * BLOCK_K + BLOCK_K * BLOCK_N) * bytes  +  BLOCK_M * BLOCK_K * bytes

(stages 1: (BLOCK_M * BLOCK_K + BLOCK_K * BLOCK_N) * bytes, the dot's two operands). That is what
Triton 3.6 and 3.8 allocate for the FP32 (IEEE, FMA) dot, compiled offline for sm_90
(`triton.compile(..., target=GPUTarget("cuda", 90, 32))`, `.metadata.shared`): 688,128 bytes for
128x128x64 with 3 stages, 90,112 for 64x64x32 with 2, 16,384 for 64x64x32 with 1; an H100/H200 block
gets at most 227 KiB (232,448 bytes), so the FP16 tiles, used for FP32 too before, failed to launch
(544-944 KiB each). For FP16/BF16 the tensor-core dot takes its A operand from registers and the same
compiles stage nothing but the two operands (8-48 KiB for the FP16 tiles below, for any num_stages), so
the bound below is not applied to them: it would discard tiles that fit. FP32's tiles are kept under the
bound with every load staged, so they fit whatever the pipeliner does.
"""

from __future__ import annotations

#: Opt-in shared memory per block (bytes): sm_90 (H100/H200) 227 KiB, sm_80 (A100) 163 KiB, sm_86/89 99 KiB.
SHARED_MEMORY = {(9, 0): 232_448, (8, 0): 166_912, (8, 6): 101_376, (8, 9): 101_376}
SM90_SHARED_MEMORY = SHARED_MEMORY[(9, 0)]
WINDOW_LOADS = 9  # the 3x3 max-pool window: nine shifted loads of the A tile per K slice


def tile(block_m: int, block_n: int, block_k: int, num_warps: int, num_stages: int, group_m: int = 8) -> dict:
    """One autotuning configuration: the kernel's block sizes plus Triton's num_warps and num_stages."""
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": group_m,
            "num_warps": num_warps, "num_stages": num_stages}


#: FP16/BF16 (tensor cores): large tiles for batch-256 feature maps, small ones for batch 1.
TILES_FP16 = (
    tile(128, 128, 64, 8, 3),
    tile(128, 64, 64, 4, 4),
    tile(64, 128, 64, 4, 4),
    tile(128, 256, 64, 8, 3),
    tile(64, 64, 32, 4, 4),
)

#: FP32 (IEEE FMA dot): every one within SM90_SHARED_MEMORY with all ten loads staged, three of them
#: within 99 KiB (sm_86/89), so that autotuning always has a configuration that launches. Few, because
#: each FP32 configuration takes 4-8 s to compile (Triton 3.6, sm_90) and autotuning compiles them all.
TILES_FP32 = (
    tile(128, 128, 32, 8, 2),  # 176 KiB
    tile(64, 128, 32, 4, 2),  # 96 KiB
    tile(64, 64, 32, 4, 2),  # 88 KiB
    tile(32, 64, 32, 4, 2),  # 48 KiB: batch 1's 7x7 maps
)


def shared_memory_bound(config: dict, element_bytes: int) -> int:
    """Bytes of shared memory a configuration needs at most when every load of the K loop is staged
    (the module docstring's formula, which matches Triton's FP32 allocation on sm_90)."""
    bm, bn, bk, stages = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"], config["num_stages"]
    operands = (bm * bk + bk * bn) * element_bytes
    if stages <= 1:
        return operands
    return (stages - 1) * (WINDOW_LOADS * bm * bk + bk * bn) * element_bytes + bm * bk * element_bytes


def fitting(configs, element_bytes: int, limit: int = SM90_SHARED_MEMORY) -> tuple[dict, ...]:
    """The configurations whose `shared_memory_bound` is within `limit` bytes."""
    return tuple(c for c in configs if shared_memory_bound(c, element_bytes) <= limit)


def tiles_for(element_bytes: int) -> tuple[dict, ...]:
    """The autotuning configurations for an element size: FP32's (4 bytes, pruned by the bound), else FP16's."""
    if element_bytes >= 4:
        return fitting(TILES_FP32, element_bytes)
    return TILES_FP16
