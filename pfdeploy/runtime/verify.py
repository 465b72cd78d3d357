"""Verification of an artifact (ONNX graph, .pt2 package, or the torch backend's prepared model)
against the PyTorch model it was exported from.

The artifact runs in ONNX Runtime exactly as the file holds it (without the in-memory attention
fusion that pfdeploy's runtime CPU sessions apply), so what is verified is what ships. Both run
on the same inputs: uniform-noise images, "real-looking" smooth images, and (with
`data`) real images from a folder; INT8 artifacts are judged on the real images when given.
Inputs are made as uint8 NHWC images; the PyTorch model gets them through `normalize_uint8`,
the artifact gets them in its own input format, so a `uint8-nhwc` graph is checked against
preprocessing done outside the graph.

Metrics (per input source): max_abs = max |got - ref|; max_rel = max_abs / max |ref| (error
relative to the logit range); mean_abs; cosine = the smallest per-sample cosine similarity;
top1 = fraction of samples with the same top-1 class; top5 = fraction whose reference top-1
class is in the artifact's top-5. Tolerances per precision are TOLERANCES.

The same comparison judges pfdeploy's speed paths of PyTorch itself (`verify_session`): a `.pt2`
package runs in its pt2 backend session, and `backend="torch"` runs the torch backend's session on
the artifact's model (BatchNorm folded, optionally compiled or fused, on `device`, in `precision`
fp32 or fp16); the reference stays the unprepared FP32 model on the CPU.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pfdeploy.calibration.preprocess import Preprocess, normalize_uint8
from pfdeploy.errors import PfdeployError

log = logging.getLogger(__name__)

# The one table of verification tolerances (documented in README "Export and verify").
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"max_rel": 1e-4, "cosine": 0.99999, "top1": 1.0, "top5": 1.0},
    "fp16": {"max_rel": 2e-2, "cosine": 0.999, "top1": 0.9, "top5": 1.0},
    # BF16 (OpenVINO on CPUs with AVX512-BF16/AMX) keeps 8 mantissa bits to FP16's 11, so 8x coarser
    # rounding per op: PyTorch running the whole model in bfloat16 (a worse case than OpenVINO, which
    # accumulates in FP32) stayed within max_rel 0.018, cosine 0.9997, top-1 0.97, top-5 1.0 on the
    # trained fixtures and r50_hybrid/vit_s_max/pit_s_max (scripts/bf16_error.py); these limits allow ~3x.
    "bf16": {"max_rel": 5e-2, "cosine": 0.998, "top1": 0.9, "top5": 1.0},
    "int8": {"max_rel": 0.25, "cosine": 0.95, "top1": 0.7, "top5": 0.9},
}


STAT_KEYS = ("max_abs", "max_rel", "mean_abs", "cosine", "top1", "top5")
SOURCE_NAMES = {"reference": "the PyTorch reference", "artifact": "the artifact"}


def nonfinite_failures(nonfinite: dict[str, int]) -> list[str]:
    """'the artifact's logits are not finite (3 NaN/Inf values)' per side that has any."""
    return [f"{SOURCE_NAMES[side]}'s logits are not finite ({count} NaN/Inf values)"
            for side, count in nonfinite.items() if count]


def nonfinite_summary(sources: dict[str, dict[str, Any]]) -> str | None:
    """One phrase naming which side (PyTorch reference or artifact) had NaN/Inf logits, and on which
    input sources; None when every compared logit was finite."""
    parts = []
    for side in SOURCE_NAMES:
        hit = {name: s["nonfinite"][side] for name, s in sources.items() if (s.get("nonfinite") or {}).get(side)}
        if hit:
            parts.append(f"{SOURCE_NAMES[side]}'s logits are not finite ({sum(hit.values())} NaN/Inf values "
                         f"on {', '.join(hit)})")
    return "; ".join(parts) or None


def compare_logits(ref: np.ndarray, got: np.ndarray, precision: str = "fp32") -> dict[str, Any]:
    """Error statistics of `got` against `ref` (both (N, classes)) and pass/fail per TOLERANCES.

    A NaN or Inf on either side fails: the statistics are then None (JSON-safe) and `nonfinite`
    counts the non-finite values of the reference and of the artifact.
    """
    if precision not in TOLERANCES:
        raise PfdeployError(f"no tolerances for precision {precision!r}; known: {', '.join(TOLERANCES)}")
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if ref.shape != got.shape:
        raise PfdeployError(f"output shapes differ: reference {ref.shape}, artifact {got.shape}")
    nonfinite = {"reference": int(np.size(ref) - np.isfinite(ref).sum()),
                 "artifact": int(np.size(got) - np.isfinite(got).sum())}
    if any(nonfinite.values()):  # NaN compares False with every tolerance: never let it pass
        return {"samples": int(ref.shape[0]), **dict.fromkeys(STAT_KEYS), "nonfinite": nonfinite,
                "passed": False, "failures": nonfinite_failures(nonfinite)}
    diff = np.abs(got - ref)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    cosine = np.sum(ref * got, axis=1) / np.maximum(norms, 1e-30)
    top5 = np.argsort(-got, axis=1)[:, :5]
    ref_top1 = ref.argmax(axis=1)
    stats = {
        "samples": int(ref.shape[0]),
        "max_abs": float(diff.max()),
        "max_rel": float(diff.max() / max(np.abs(ref).max(), 1e-30)),
        "mean_abs": float(diff.mean()),
        "cosine": float(cosine.min()),
        "top1": float(np.mean(ref_top1 == got.argmax(axis=1))),
        "top5": float(np.mean([r in row for r, row in zip(ref_top1, top5, strict=True)])),
        "nonfinite": nonfinite,
    }
    tol = TOLERANCES[precision]
    failures = [
        f"{key} {stats[key]:.3g} {'>' if key == 'max_rel' else '<'} {limit:g}"
        for key, limit in tol.items()
        if (stats[key] > limit if key == "max_rel" else stats[key] < limit)
    ]
    return {**stats, "passed": not failures, "failures": failures}


@dataclass
class VerifyReport:
    """Outcome of `verify_artifact`: per-source statistics and the overall verdict."""

    artifact: str
    model: str
    precision: str
    input_format: str
    checkpoint_sha256: str
    tolerances: dict[str, float]
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    backend: str = "onnxruntime"

    @property
    def judged_on(self) -> list[str]:
        """The sources the verdict rests on (see `judged_sources`)."""
        return judged_sources(self.precision, self.sources)

    @property
    def nonfinite(self) -> str | None:
        """Which side had NaN/Inf logits on which sources (see `nonfinite_summary`); None if none."""
        return nonfinite_summary(self.sources)

    @property
    def passed(self) -> bool:
        """True when every judged input source is within the precision's tolerances and no logit,
        judged or not, is NaN or Inf."""
        judged = self.judged_on
        return bool(judged) and all(self.sources[name]["passed"] for name in judged) and not self.nonfinite

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view (as written by `pfdeploy verify --json`)."""
        return {**asdict(self), "judged_on": self.judged_on, "passed": self.passed}

    def format(self) -> str:
        """Human-readable table plus a PASS/FAIL line."""
        cols = ("samples", "max_abs", "max_rel", "mean_abs", "cosine", "top1", "top5")
        lines = [f"{self.artifact}: {self.model} {self.precision} {self.input_format} "
                 f"(checkpoint {self.checkpoint_sha256[:12]}, run by {self.backend})",
                 f"{'source':<12}" + "".join(f"{c:>11}" for c in cols)]
        for name, s in self.sources.items():
            cells = "".join(f"{s[c]:>11d}" if c == "samples" else f"{'-' if s[c] is None else format(s[c], '.3g'):>11}"
                            for c in cols)
            note = "" if s["passed"] else "  <- " + "; ".join(s["failures"])
            if name not in self.judged_on:
                note += "  (reported, not judged: outside the INT8 calibration distribution)"
            lines.append(f"{name:<12}{cells}{note}")
        tol = ", ".join(f"{k} {'<=' if k == 'max_rel' else '>='} {v:g}" for k, v in self.tolerances.items())
        if self.precision == "int8" and "data" not in self.sources:
            lines.append("note: INT8 is judged on noise here; pass --data DIR to judge it on real images")
        if self.nonfinite:
            lines.append(f"FAIL: {self.nonfinite}")
        lines.append(f"{'PASS' if self.passed else 'FAIL'} ({self.precision} tolerances: {tol})")
        return "\n".join(lines)


def random_images(count: int, size: int, seed: int) -> np.ndarray:
    """Uniform-noise uint8 NHWC images."""
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def smooth_images(count: int, size: int, seed: int) -> np.ndarray:
    """Real-looking uint8 NHWC images: bicubically upsampled random colour fields plus mild noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        coarse = rng.integers(0, 256, (int(rng.integers(3, 9)),) * 2 + (3,), dtype=np.uint8)
        field_ = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), np.float32)
        out[i] = np.clip(field_ + rng.normal(0, 6, field_.shape), 0, 255).astype(np.uint8)
    return out


def folder_images(source: str | Path, pre: Preprocess, count: int, seed: int = 0) -> np.ndarray:
    """Up to `count` images of an image source (folder or .npy/.npz), cropped to uint8 NHWC.

    Reads through pfdeploy.calibration.images, the reader calibration and `eval` use.
    """
    from pfdeploy.calibration.images import load_batch

    return load_batch(source, pre, num_images=count, seed=seed, layout="nhwc")


def judged_sources(precision: str, sources: dict) -> list[str]:
    """The input sources a verdict rests on.

    INT8 is judged on real images (`data`) when there are some: uniform noise and synthetic images
    lie outside the calibration distribution, where INT8 ranges clip by design, so their statistics
    are reported but do not decide. Every other case: all sources.
    """
    if precision == "int8" and "data" in sources:
        return ["data"]
    return list(sources)


def _run_in_batches(fn, images: np.ndarray, batch: int) -> np.ndarray:
    """Apply fn to fixed-size batches (padding the last by repetition) and concatenate."""
    outs = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        real = len(chunk)
        if real < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, axis=0)])
        outs.append(fn(chunk)[:real])
    return np.concatenate(outs)


VERIFY_BACKENDS = ("onnxruntime", "openvino", "torch", "pt2")
#: The compute precisions a verify backend takes (the others run the artifact's own).
VERIFY_PRECISIONS = {"openvino": ("fp32", "bf16"), "torch": ("fp32", "fp16")}


def verified_precision(artifact_precision: str, compute: str | None) -> str:
    """The tolerance row: the artifact's precision, or bf16 for a float graph computed in BF16 (an INT8
    graph keeps its own, looser row)."""
    return "bf16" if compute == "bf16" and artifact_precision in ("fp32", "fp16") else artifact_precision


def _openvino_runner(artifact, compute: str | None, intra_op_threads: int | None):
    """(OpenVinoSession: call it with x for logits, fixed batch or None, input dtype or None): the
    file as pfdeploy's openvino backend runs it (what `load(..., backend="openvino")` serves)."""
    from pfdeploy.runtime.openvino_backend import OpenVinoSession

    session = OpenVinoSession(artifact, precision=compute or "fp32", intra_op_threads=intra_op_threads)
    spec = session.input_spec
    in_dtype = np.float16 if spec.dtype == "float16" else None
    return session, (spec.max_batch if spec.max_batch == spec.min_batch else None), in_dtype


def verification_sources(samples: int, pre, seed: int, data: str | Path | None) -> dict[str, np.ndarray]:
    """{source name: uint8 images} every verification compares on: noise, real-looking images, and `data`."""
    sources = {"random": random_images(samples, pre.size, seed),
               "real-looking": smooth_images(samples, pre.size, seed + 1)}
    if data is not None:
        if not Path(data).exists():
            raise PfdeployError(f"--data {data} is not a folder of images or an .npy/.npz file")
        sources["data"] = folder_images(data, pre, samples, seed)
    return sources


def check_counts(samples: int, batch: int) -> None:
    """--samples (images per source) in 1..MAX_SAMPLES and --batch in 1..MAX_BATCH (pfdeploy.limits), or one
    line: `--samples 100000000` would allocate tens of GB of images before anything is compared."""
    from pfdeploy.limits import MAX_BATCH, MAX_SAMPLES, is_int

    for name, value, top in (("--samples", samples, MAX_SAMPLES), ("--batch", batch, MAX_BATCH)):
        if not is_int(value) or not 1 <= value <= top:
            raise PfdeployError(f"{name} must be an integer in 1..{top}, got {value!r}")


def verify_session(session, model, *, samples: int = 8, data: str | Path | None = None, batch: int = 4,
                   seed: int = 0, precision: str | None = None, artifact: str | None = None) -> VerifyReport:
    """Compare a runtime Session (any backend) with `model`, the unprepared PyTorch reference, on the
    same inputs (noise, real-looking images, `data`), within the tolerances of `precision` (default:
    the session's). The session takes the images in its own input format; a fixed batch is honoured."""
    import torch

    check_counts(samples, batch)
    meta, spec, pre = session.metadata, session.input_spec, session.preprocess
    precision = precision or session.precision
    if precision not in TOLERANCES:
        raise PfdeployError(f"no tolerances for precision {precision!r}; known: {', '.join(TOLERANCES)}")
    batch = spec.max_batch if spec.max_batch is not None and spec.max_batch == spec.min_batch else batch
    in_dtype = np.float16 if spec.dtype == "float16" else None

    def run_artifact(images: np.ndarray) -> np.ndarray:
        x = images if spec.dtype == "uint8" else normalize_uint8(images, pre)
        return np.asarray(session(x.astype(in_dtype) if in_dtype is not None else x)).astype(np.float32)

    def run_torch(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(normalize_uint8(images, pre))).numpy()

    sources = verification_sources(samples, pre, seed, data)
    report = VerifyReport(artifact or str(meta.get("pfdeploy.model")), str(meta.get("pfdeploy.model")), precision,
                          spec.input_format, str(meta.get("pfdeploy.checkpoint_sha256", "in-memory")),
                          TOLERANCES[precision], backend=session.backend)
    for name, images in sources.items():
        report.sources[name] = compare_logits(_run_in_batches(run_torch, images, batch),
                                              _run_in_batches(run_artifact, images, batch), precision)
    return report


def _verify_torch_path(artifact: str | Path, backend: str, *, checkpoint, samples: int, data, batch: int,
                       seed: int, precision: str | None, device: str | None, options: dict | None) -> VerifyReport:
    """verify_artifact for backend "pt2" (the package) and "torch" (the torch backend's session on the
    artifact's model): the session against the unprepared PyTorch model from the metadata."""
    from pfdeploy.export.metadata import model_from_metadata, require_pfdeploy_metadata
    from pfdeploy.runtime import load

    opened = {"device": device}
    if backend == "torch":
        opened.update(checkpoint=checkpoint, precision=precision or "fp32", **(options or {}))
    elif options:
        raise PfdeployError("session options apply to backend torch; a .pt2 package runs as it was compiled")
    with load(artifact, backend=backend, **opened) as session:
        require_pfdeploy_metadata(session.metadata, str(artifact))
        model = model_from_metadata(session.metadata, checkpoint)
        return verify_session(session, model, samples=samples, data=data, batch=batch, seed=seed,
                              artifact=str(artifact))


def verify_artifact(artifact: str | Path, *, checkpoint: str | Path | None = None, samples: int = 8,
                    data: str | Path | None = None, batch: int = 4, seed: int = 0,
                    intra_op_threads: int | None = None, backend: str | None = None,
                    precision: str | None = None, device: str | None = None,
                    options: dict | None = None) -> VerifyReport:
    """Run `artifact` in ONNX Runtime (or `backend="openvino"`, with `precision` "fp32"/"bf16") and its
    PyTorch model on the same inputs; compare the logits with the tolerances of the artifact's
    precision (bf16 when an fp32 graph is computed in BF16).

    backend None: "pt2" for a .pt2 package (`device`: default the one it was compiled for), else
    "onnxruntime". backend "torch": the torch backend's session on the artifact's model (`precision`
    fp32/fp16, `device`, `options` such as compile or fused), judged with the tolerances of `precision`.
    """
    import torch

    from pfdeploy.export.metadata import (
        PREFIX,
        model_from_metadata,
        preprocess_from_metadata,
        read_metadata,
        require_pfdeploy_metadata,
    )
    from pfdeploy.runtime.ort_options import ort_session_from_onnx

    check_counts(samples, batch)
    backend = backend or ("pt2" if str(artifact).lower().endswith(".pt2") else "onnxruntime")
    if backend not in VERIFY_BACKENDS:
        raise PfdeployError(f"verify runs artifacts with {' or '.join(VERIFY_BACKENDS)}, not {backend!r}")
    if precision not in (None, "fp32") and precision not in VERIFY_PRECISIONS.get(backend, ()):
        computing = [b for b, computed in VERIFY_PRECISIONS.items() if precision in computed] or ["none"]
        raise PfdeployError(f"precision {precision} needs backend {' or '.join(computing)}; {backend} runs the "
                            "artifact's own precision")
    if (str(artifact).lower().endswith(".pt2")) != (backend == "pt2") and backend != "torch":
        raise PfdeployError(f"backend {backend} runs {'.pt2 packages' if backend == 'pt2' else 'ONNX files'}, "
                            f"not {artifact}")
    if device is not None and backend not in ("torch", "pt2"):
        raise PfdeployError(f"--device applies to backends torch and pt2; {backend} verifies on the CPU")
    if backend in ("torch", "pt2"):
        return _verify_torch_path(artifact, backend, checkpoint=checkpoint, samples=samples, data=data,
                                  batch=batch, seed=seed, precision=precision, device=device, options=options)
    meta = read_metadata(artifact)
    require_pfdeploy_metadata(meta, str(artifact))
    precision_of_artifact, input_format = meta[PREFIX + "precision"], meta[PREFIX + "input_format"]
    if precision_of_artifact not in TOLERANCES:
        raise PfdeployError(f"{artifact} has precision {precision_of_artifact!r}, which verify has no "
                            "tolerances for")
    pre = preprocess_from_metadata(meta, str(artifact))
    model = model_from_metadata(meta, checkpoint)
    if backend == "openvino":
        ov_session, fixed, in_dtype = _openvino_runner(artifact, precision, intra_op_threads)
        run_artifact = ov_session
    else:
        # The file exactly as written: not the in-memory attention fusion that runtime CPU sessions add.
        session = ort_session_from_onnx(artifact, intra_op_threads=intra_op_threads, fuse_attention=False)
        inp = session.get_inputs()[0]
        fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
        in_dtype = np.float16 if inp.type == "tensor(float16)" else None
        run_artifact = lambda x: session.run(None, {inp.name: x})[0]  # noqa: E731
    batch = fixed or batch
    precision = verified_precision(precision_of_artifact, precision)

    def run_onnx(images: np.ndarray) -> np.ndarray:
        x = images if input_format == "uint8-nhwc" else normalize_uint8(images, pre)
        x = x.astype(in_dtype) if in_dtype is not None else x
        return np.asarray(run_artifact(x)).astype(np.float32)

    def run_torch(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(normalize_uint8(images, pre))).numpy()

    sources = verification_sources(samples, pre, seed, data)
    report = VerifyReport(str(artifact), meta[PREFIX + "model"], precision, input_format,
                          meta[PREFIX + "checkpoint_sha256"], TOLERANCES[precision], backend=backend)
    for name, images in sources.items():
        ref = _run_in_batches(run_torch, images, batch)
        got = _run_in_batches(run_onnx, images, batch)
        report.sources[name] = compare_logits(ref, got, precision)
        log.debug("%s: %s", name, report.sources[name])
    return report
