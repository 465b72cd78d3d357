"""Intermediate tensors of an ONNX graph on real inputs, through ONNX Runtime CPU.

Equalization (per-channel ranges of the tensors it rescales) and sensitivity analysis (INT8 vs FP32
activations) both read tensors that are not graph outputs: `with_outputs` makes them outputs of a
copy of the graph, and `run_batches` runs that copy batch by batch, handing each batch's tensors to
a callback so that no more than one batch of activations is ever held.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx

PROTOBUF_LIMIT = 2**31 - 1  # bytes: the largest message protobuf serializes


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` whose outputs are its own plus `names` (intermediate tensors, any type)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in names:
        if name not in present:
            copy.graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)
    return copy


def save_for_session(model: onnx.ModelProto, path: Path) -> Path:
    """Write `model` where an onnxruntime session can open it (external data beside it when over 2 GB)."""
    large = model.ByteSize() >= PROTOBUF_LIMIT
    onnx.save(model, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
              location=path.name + ".data")
    return path


def session_for(path: Path):
    """A plain ONNX Runtime CPU session of `path` (one thread pool, every graph optimization)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_batches(session, input_name: str, batches: Iterable[np.ndarray], names: Sequence[str],
                visit: Callable[[dict[str, np.ndarray]], None], real: Sequence[int] | None = None) -> None:
    """Run `session` on every batch and call `visit({name: array})` with the requested tensors; with
    `real` (images per batch that are not padding, see `padded_batches`) only those rows are visited."""
    names = list(names)
    for index, batch in enumerate(batches):
        values = session.run(names, {input_name: batch})
        if real is not None:
            values = [v[:real[index]] for v in values]
        visit(dict(zip(names, values, strict=True)))


def padded_batches(inputs: np.ndarray, fixed_batch: int | None, size: int) -> tuple[list[np.ndarray], list[int]]:
    """(`inputs` in batches of `size`, or of exactly `fixed_batch` with the last one filled up from the start of
    the set; how many images of each batch are real, not filling)."""
    from pfdeploy.calibration.quantize import calibration_batches

    if fixed_batch is None:
        batches = [inputs[i:i + size] for i in range(0, len(inputs), size)]
        return batches, [len(b) for b in batches]
    batches = calibration_batches(inputs, fixed_batch)
    real = [min(fixed_batch, len(inputs) - i * fixed_batch) for i in range(len(batches))]
    return batches, real
