"""The fused kernel's autotuning tiles fit in shared memory (pfdeploy/kernels/tiles.py; no Triton or GPU needed)."""

from __future__ import annotations

import pytest

from pfdeploy.kernels.tiles import (
    SM90_SHARED_MEMORY,
    TILES_FP16,
    TILES_FP32,
    fitting,
    shared_memory_bound,
    tile,
    tiles_for,
)


@pytest.mark.parametrize("config,element_bytes,measured", [
    (tile(128, 128, 64, 8, 3), 4, 688_128),  # Triton 3.6 and 3.8, sm_90, .metadata.shared of the FP32 kernel
    (tile(128, 64, 64, 4, 4), 4, 966_656),
    (tile(64, 128, 64, 4, 4), 4, 557_056),
    (tile(64, 64, 32, 4, 4), 4, 253_952),
    (tile(128, 128, 32, 8, 2), 4, 180_224),
    (tile(64, 128, 32, 4, 2), 4, 98_304),
    (tile(64, 64, 32, 4, 2), 4, 90_112),
    (tile(32, 64, 32, 4, 2), 4, 49_152),
    (tile(128, 128, 64, 8, 1), 4, 65_536),
    (tile(64, 64, 32, 4, 1), 4, 16_384),
], ids=str)
def test_the_bound_is_what_triton_allocates_for_fp32_on_sm90(config, element_bytes, measured):
    assert shared_memory_bound(config, element_bytes) == measured


def test_every_fp32_tile_fits_an_h100_and_the_fp16_tiles_would_not():
    assert TILES_FP32 and all(shared_memory_bound(t, 4) <= SM90_SHARED_MEMORY for t in TILES_FP32)
    assert tiles_for(4) == TILES_FP32  # nothing pruned: each one was chosen to fit
    assert sum(shared_memory_bound(t, 4) <= 101_376 for t in TILES_FP32) >= 2  # sm_86/89 keep some too
    assert fitting(TILES_FP16, 4) == ()  # the defect: FP32 on the FP16 tiles needed 544-944 KiB
    assert tiles_for(2) == TILES_FP16


def test_the_fp32_autotuner_gets_the_fp32_tiles():
    pytest.importorskip("triton", reason="needs Triton (pip install 'pfdeploy[kernels]')")
    import importlib

    import torch

    pool_gemm = importlib.import_module("pfdeploy.kernels.pool_gemm")

    def shapes(configs):
        return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_stages) for c in configs]

    assert shapes(pool_gemm.autotuned_for(torch.float32).configs) == [
        (t["BLOCK_M"], t["BLOCK_N"], t["BLOCK_K"], t["num_stages"]) for t in TILES_FP32]
    assert pool_gemm.autotuned_for(torch.float16).configs == pool_gemm.CONFIGS
