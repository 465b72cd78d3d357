"""FP32 on this CPU: ONNX Runtime vs PyTorch eager, and each model's effective compute rate.

For r50, r50_max, r50_hybrid, vit_s_max and pit_s_max at batch 1 and 8, all workloads (ORT and
torch, every model) are interleaved round by round in one run and medians reported: img/s, the
ORT / torch ratio, and the effective compute rate (model MACs x img/s) as GMAC/s and as a share
of r50's ORT rate measured in the same rounds. Goals at batch 8: r50 >= 1.5x torch eager; the
others >= 90% of r50's rate. `--ablation` times the export/session variants that were
investigated (docs/benchmarks.md) against each other.

    flock /tmp/pfdeploy-cpu.lock .venv/bin/python benchmarks/bench_fp32.py
    flock /tmp/pfdeploy-cpu.lock .venv/bin/python benchmarks/bench_fp32.py --ablation
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MODELS = ("r50", "r50_max", "r50_hybrid", "vit_s_max", "pit_s_max")
BATCHES = (1, 8)
COMMAND = "flock /tmp/pfdeploy-cpu.lock .venv/bin/python benchmarks/bench_fp32.py"
CACHE = Path(tempfile.gettempdir()) / "pfdeploy-bench-fp32"


def _source_digest() -> str:
    """Hash of the model and export code, so a cached export is redone when either changes."""
    import hashlib

    import pfdeploy

    root = Path(pfdeploy.__file__).parent
    digest = hashlib.sha256()
    for path in sorted([*root.glob("models/*.py"), *root.glob("export/*.py")]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def export_cached(name: str, **kwargs) -> Path:
    """Export `name` (seeded random weights) once per model/export source and option set."""
    from pfdeploy.export import onnx_from_model

    legacy = kwargs.pop("legacy", False)
    tag = ("legacy_" if legacy else "") + "_".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
    path = CACHE / f"{name}_{_source_digest()}_{tag or 'default'}.onnx"
    if not path.exists():
        with legacy_layout() if legacy else contextlib.nullcontext():
            onnx_from_model(name, path, **kwargs)
    return path


def _workloads(models, batch: int, sessions: dict, torch_models: dict) -> dict:
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    xt = torch.from_numpy(x)
    loads = {}
    for name in models:
        sess = sessions[name]
        loads[f"{name}/ort"] = lambda s=sess: s.run(None, {"input": x})
        model = torch_models[name]

        def eager(m=model):
            with torch.inference_mode():
                return m(xt)

        loads[f"{name}/torch"] = eager
    return loads


def measure(models=MODELS, batches=BATCHES, rounds: int = 9, min_seconds: float = 0.3) -> list[dict]:
    """Rows of img/s, ratio and compute rate per (model, batch), interleaved per batch size."""
    from pfdeploy.models import count_macs, create_model
    from pfdeploy.runtime.ort_options import ort_session_from_onnx
    from pfdeploy.runtime.timing import time_interleaved

    macs = {n: count_macs(create_model(n), (3, 224, 224)) for n in models}
    macs_attn = {n: count_macs(create_model(n), (3, 224, 224), attention=True) for n in models}
    sessions = {n: ort_session_from_onnx(export_cached(n)) for n in models}
    torch_models = {n: create_model(n) for n in models}
    rows = []
    for batch in batches:
        times = time_interleaved(_workloads(models, batch, sessions, torch_models), rounds=rounds,
                                 min_seconds=min_seconds, warmup=1)
        ips = {k: batch / float(np.median(v)) for k, v in times.items()}
        per_round = {k: batch / np.asarray(v) for k, v in times.items()}  # img/s in each round
        for name in models:
            ort_r, torch_r = per_round[f"{name}/ort"], per_round[f"{name}/torch"]
            # Ratios are medians of per-round ratios: both sides of a ratio share a round's noise.
            of_r50 = (np.median(ort_r * macs[name] / (per_round["r50/ort"] * macs["r50"]))
                      if "r50" in models else float("nan"))
            of_r50_attn = (np.median(ort_r * macs_attn[name] / (per_round["r50/ort"] * macs["r50"]))
                           if "r50" in models else float("nan"))
            rows.append({"model": name, "batch": batch, "ort_ips": ips[f"{name}/ort"],
                         "torch_ips": ips[f"{name}/torch"], "ratio": float(np.median(ort_r / torch_r)),
                         "gmacs": macs[name] / 1e9, "ort_gmac_s": ips[f"{name}/ort"] * macs[name] / 1e9,
                         "torch_gmac_s": ips[f"{name}/torch"] * macs[name] / 1e9, "of_r50": float(of_r50),
                         "of_r50_attn": float(of_r50_attn)})
    return rows


def table(rows: list[dict]) -> str:
    head = ("| model | batch | GMACs | ORT img/s | torch img/s | ORT/torch | ORT GMAC/s | torch GMAC/s "
            "| ORT rate / r50's | same, attention matmuls counted |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['gmacs']:.2f} | {r['ort_ips']:.1f} | "
                     f"{r['torch_ips']:.1f} | {r['ratio']:.2f}x | {r['ort_gmac_s']:.0f} | "
                     f"{r['torch_gmac_s']:.0f} | {100 * r['of_r50']:.0f}% | {100 * r['of_r50_attn']:.0f}% |")
    return "\n".join(lines)


@contextlib.contextmanager
def legacy_layout():
    """The model code's formulation before the export fixes, for the ablation: tokens <-> grid by
    transpose(1, 2)+reshape (Transposes ORT cannot fold into its NCHWc reorders) and attention
    through F.scaled_dot_product_attention (exported with run-time Shape arithmetic)."""
    import torch.nn.functional as F

    from pfdeploy.models import layers, pit, vit

    def attn(self, x):
        qkv = self.qkv(x).reshape(-1, self.tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(-1, self.tokens, self.dim))

    def mixer(self, x):
        x = F.gelu(self.qkv(x))
        x = self.pool(x.transpose(1, 2).reshape(-1, self.hidden, self.side, self.side)).flatten(2).transpose(1, 2)
        return self.proj(F.gelu(x))

    def stage(self, x):
        tokens = self.blocks(x.flatten(2).transpose(1, 2))
        return tokens.transpose(1, 2).reshape(-1, self.dim, self.side, self.side)

    def patch(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)

    def pit_features(self, x):
        x = self.patch_embed(x) + self.pos_embed
        for index, st in enumerate(self.transformers):
            x = st(x)
            if index < len(self.pools):
                x = self.pools[index](x)
        return self.norm(x.flatten(2).transpose(1, 2))

    patches = [(layers.Attention, "forward", attn), (layers.MaxPoolMixer, "forward", mixer),
               (pit.Stage, "forward", stage), (vit.PatchEmbed, "forward", patch),
               (pit.PFPiT, "forward_features", pit_features)]
    saved = [(cls, name, getattr(cls, name)) for cls, name, _ in patches]
    try:
        for cls, name, fn in patches:
            setattr(cls, name, fn)
        yield
    finally:
        for cls, name, fn in saved:
            setattr(cls, name, fn)


def skip_layer_norm_fused(path: Path) -> Path:
    """`path` after onnxruntime.transformers' optimizer (exact GELU kept): bias + residual Add +
    LayerNorm fused into com.microsoft.SkipLayerNormalization (tried and rejected, see docs)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    out = path.with_name(path.stem + "_skiplayernorm.onnx")
    if not out.exists():
        options = FusionOptions("vit")
        options.enable_gelu_approximation = False
        optimize_model(str(path), model_type="vit", num_heads=0, hidden_size=0,
                       optimization_options=options, opt_level=0).save_model_to_file(str(out))
    return out


def ablation(rounds: int = 9, min_seconds: float = 0.3, batch: int = 8) -> str:
    """Export and session variants of the transformer graphs, interleaved with r50 (batch 8)."""
    import onnxruntime as ort

    from pfdeploy.models import count_macs, create_model
    from pfdeploy.runtime.ort_options import ort_session_from_onnx, session_options
    from pfdeploy.runtime.timing import time_interleaved

    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    variants = {"r50 (default)": ("r50", {}, {})}
    for name in ("vit_s_max", "pit_s_max"):
        variants[f"{name} legacy layout, opset 18"] = (name, {"opset": 18, "legacy": True}, {})
        variants[f"{name} legacy layout, opset 20"] = (name, {"legacy": True}, {})
        variants[f"{name} opset 18 (erf GELU)"] = (name, {"opset": 18}, {})
        variants[f"{name} default, attention not fused"] = (name, {}, {"fuse_attention": False})
        variants[f"{name} default"] = (name, {}, {})
        variants[f"{name} default + SkipLayerNormalization"] = (name, {}, {"skip_layer_norm": True})
        variants[f"{name} default, ORT_ENABLE_BASIC"] = (name, {}, {"level": "basic"})
        variants[f"{name} default, 1 thread"] = (name, {}, {"threads": 1})
    loads, macs = {}, {}
    for label, (name, export_kwargs, sess) in variants.items():
        path = export_cached(name, **export_kwargs)
        if sess.get("level") == "basic":
            opts = session_options()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            s = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        elif sess.get("skip_layer_norm"):
            s = ort_session_from_onnx(skip_layer_norm_fused(path))
        else:
            s = ort_session_from_onnx(path, intra_op_threads=sess.get("threads"),
                                      fuse_attention=sess.get("fuse_attention", True))
        loads[label] = lambda s=s: s.run(None, {"input": x})
        macs[label] = count_macs(create_model(name), (3, 224, 224))
    times = time_interleaved(loads, rounds=rounds, min_seconds=min_seconds, warmup=1)
    roof = batch / np.asarray(times["r50 (default)"]) * macs["r50 (default)"]
    lines = ["| variant (batch 8, ORT) | img/s | GMAC/s | rate / r50's |", "|---|---|---|---|"]
    for label, t in times.items():
        ips = batch / float(np.median(t))
        share = float(np.median(batch / np.asarray(t) * macs[label] / roof))
        lines.append(f"| {label} | {ips:.1f} | {ips * macs[label] / 1e9:.0f} | {100 * share:.0f}% |")
    return "\n".join(lines)


def run(args) -> str:
    """The markdown section for benchmarks/run.py."""
    rounds = getattr(args, "rounds", None) or 9
    start = time.perf_counter()
    rows = measure(rounds=rounds)
    parts = [
        "## FP32: ONNX Runtime vs PyTorch eager (CPU)",
        "",
        f"`{COMMAND}` ({rounds} interleaved rounds; img/s are medians, ratios medians of per-round "
        f"ratios; {torch.get_num_threads()} threads each; {time.perf_counter() - start:.0f} s). "
        "MACs count convolutions and linear layers "
        "(attention matmuls excluded, as in the paper's figures); the rate column is "
        "model MACs x img/s relative to r50's ORT rate in the same rounds.",
        "",
        table(rows),
    ]
    if getattr(args, "ablation", False):
        parts += ["", "Ablation (`--ablation`):", "", ablation(rounds=rounds)]
    return "\n".join(parts) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--ablation", action="store_true", help="also time the investigated variants")
    logging.basicConfig(level=logging.WARNING)
    print(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
