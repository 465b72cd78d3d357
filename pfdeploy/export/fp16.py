"""FP16 graphs: compute in FP16, keep overflow-prone ops in FP32 (onnxruntime's converter)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import onnx

from pfdeploy.errors import PfdeployError
from pfdeploy.export.metadata import PREFIX, read_metadata, set_metadata

log = logging.getLogger(__name__)

# Ops whose FP16 evaluation overflows or loses the range it needs (the known ViT failure):
# normalizations and their reductions, softmax, exponentials, Erf (opset-18 GELU), mean pooling.
# The opset-20 `Gelu` op stays FP16: x * Phi(x) is bounded by |x| and cannot overflow.
FP32_OPS = (
    "LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2",
    "Pow", "Sqrt", "Reciprocal", "Exp", "Log", "Erf", "GlobalAveragePool",
    "InstanceNormalization", "GroupNormalization", "RMSNormalization",
)


def unshare_initializers(model: onnx.ModelProto, ops: tuple[str, ...]) -> onnx.ModelProto:
    """Give each `ops` node its own copy of initializers it shares with other nodes (in place).

    The exporter deduplicates equal initializers (e.g. every LayerNorm's weight in a fresh model),
    and onnxruntime's converter names its FP32 Cast after the initializer, once per consumer,
    which would break SSA form when one initializer feeds several kept-FP32 nodes.
    """
    inits = {t.name: t for t in model.graph.initializer}
    uses = Counter(name for node in model.graph.node for name in node.input if name in inits)
    for index, node in enumerate(model.graph.node):
        if node.op_type not in ops:
            continue
        for slot, name in enumerate(node.input):
            if uses.get(name, 0) > 1:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__{node.op_type}{index}"
                model.graph.initializer.append(copy)
                node.input[slot] = copy.name
                uses[name] -= 1
    return model


def fp16_model(source: onnx.ModelProto, *, keep_io_types: bool = True,
               fp32_ops: tuple[str, ...] = FP32_OPS) -> onnx.ModelProto:
    """An FP16 copy of an FP32 ModelProto; `fp32_ops` stay FP32 behind Cast nodes.

    `keep_io_types=True` keeps the graph's input and output FP32 (a Cast at each end), so
    callers feed and read the same arrays as for the FP32 graph.
    """
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:  # pragma: no cover - onnxruntime is a runtime dependency
        raise PfdeployError("FP16 conversion needs onnxruntime (pip install onnxruntime)") from exc
    model = onnx.ModelProto()
    model.CopyFrom(source)
    unshare_initializers(model, fp32_ops)
    del model.graph.value_info[:]  # stale FP32 annotations; shape inference re-derives them
    converted = convert_float_to_float16(
        model, keep_io_types=keep_io_types, op_block_list=list(fp32_ops), disable_shape_infer=False,
    )
    from onnxruntime.transformers.onnx_model import OnnxModel

    OnnxModel(converted).topological_sort()  # the converter appends its IO Casts at the end
    kept = Counter(n.op_type for n in converted.graph.node if n.op_type in fp32_ops)
    if kept:
        log.info("fp16: kept in FP32: %s", ", ".join(f"{op} x{n}" for op, n in sorted(kept.items())))
    return converted


def fp16_from_onnx(src: str | Path, dst: str | Path, *, keep_io_types: bool = True) -> Path:
    """Convert the FP32 ONNX file `src` to an FP16 graph at `dst` (atomic; metadata copied)."""
    from pfdeploy._io import check_output_file, refuse_overwrite
    from pfdeploy._onnxfile import load_onnx
    from pfdeploy.export.onnx import check_and_save

    src, dst = Path(src), Path(dst)
    check_output_file(dst, "output")
    refuse_overwrite(dst, [src], "output")
    source = load_onnx(src)
    meta = read_metadata(source)
    if meta.get(PREFIX + "precision", "fp32") != "fp32":
        raise PfdeployError(f"{src} is {meta[PREFIX + 'precision']}, not fp32; convert an fp32 export")
    model = fp16_model(source, keep_io_types=keep_io_types)
    set_metadata(model, {**meta, PREFIX + "precision": "fp16",
                         PREFIX + "fp16_io": "fp32" if keep_io_types else "fp16",
                         PREFIX + "fp16_fp32_ops": ",".join(FP32_OPS)})
    return check_and_save(model, dst)

