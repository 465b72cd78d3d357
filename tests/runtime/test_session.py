"""Session interface: input validation, load() dispatch and errors, close/context manager."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from pfdeploy.errors import PfdeployError
from pfdeploy.runtime import backend_for, load
from pfdeploy.runtime.session import InputSpec, spec_for_format

NCHW = spec_for_format("float-nchw", 32)
NHWC = spec_for_format("uint8-nhwc", 32)


def test_spec_for_format_reflects_layout_and_dtype():
    assert (NCHW.shape, NCHW.dtype, NCHW.layout, NCHW.input_format) == ((None, 3, 32, 32), "float32", "NCHW",
                                                                         "float-nchw")
    assert (NHWC.shape, NHWC.dtype, NHWC.layout, NHWC.input_format) == ((None, 32, 32, 3), "uint8", "NHWC",
                                                                         "uint8-nhwc")
    assert NHWC.example(2).dtype == np.uint8 and NHWC.example(2).shape == (2, 32, 32, 3)
    assert NCHW.example(3).shape == (3, 3, 32, 32) and NCHW.image_size == NHWC.image_size == 32


@pytest.mark.parametrize("spec,shape,dtype,message", [
    (NCHW, (3, 32, 32), "float32", "4-D"),
    (NCHW, (2, 32, 32, 3), "float32", "looks like NHWC"),
    (NHWC, (2, 3, 32, 32), "uint8", "looks like NCHW"),
    (NCHW, (2, 3, 64, 64), "float32", "preprocess images to 32x32"),
    (NCHW, (2, 3, 32, 32), "float64", "astype(np.float32)"),
    (NHWC, (2, 32, 32, 3), "float32", "raw uint8 pixels"),
    (InputSpec("input", (None, 3, 8, 8), "float32", "NCHW", 2, 2), (3, 3, 8, 8), "float32", "batch range 2..2"),
    (NCHW, (0, 3, 32, 32), "float32", "batch range"),
])
def test_input_spec_rejects_with_a_clear_message(spec, shape, dtype, message):
    with pytest.raises(PfdeployError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        spec.check(shape, dtype)


def test_input_spec_accepts_a_matching_input():
    NCHW.check((5, 3, 32, 32), "float32")
    NHWC.check((1, 32, 32, 3), "uint8")


def test_unknown_input_format():
    with pytest.raises(PfdeployError, match="unknown input format"):
        spec_for_format("float-nhwc", 32)


def test_backend_for_picks_by_suffix_and_name():
    assert backend_for("a/b.onnx") == "onnxruntime"
    assert backend_for("m.plan") == backend_for("m.ENGINE") == "tensorrt"
    assert backend_for("r50_hybrid") == backend_for("resnet50") == "torch"
    with pytest.raises(PfdeployError, match="neither an artifact"):
        backend_for("not_a_model")


@pytest.mark.parametrize("target,kwargs,message", [
    ("missing.onnx", {}, "not found"),
    ("missing.plan", {}, "not found"),
    ("r50", {"backend": "tflite"}, "unknown backend"),
    ("r50", {"intra_op_threads": 2}, "unknown option"),
    ("missing.onnx", {"cuda_graph": True}, "unknown option"),
    ("r50", {"backend": "onnxruntime"}, "runs .onnx files"),
    ("r50", {"device": "tpu"}, "unknown device"),
    ("r50", {"precision": "int8"}, "precision"),
])
def test_load_errors_are_one_line(target, kwargs, message):
    with pytest.raises(PfdeployError, match=message) as info:
        load(target, **kwargs)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def ort_session(cheap_onnx):
    return load(cheap_onnx("r50_hybrid"))


def test_session_rejects_non_arrays_and_bad_inputs(ort_session):
    with pytest.raises(PfdeployError, match="NumPy array or torch tensor"):
        ort_session([[1, 2, 3]])
    with pytest.raises(PfdeployError, match="float32"):
        ort_session(np.zeros((1, 3, 32, 32), np.float64))
    with pytest.raises(PfdeployError, match="looks like NHWC"):
        ort_session(torch.zeros(1, 32, 32, 3))


def test_close_and_context_manager(cheap_onnx):
    path = cheap_onnx("r50_hybrid")
    with load(path) as session:
        x = session.input_spec.example(1)
        assert session(x).shape == (1, 10)
    with pytest.raises(PfdeployError, match="closed"):
        session(x)
    session.close()  # idempotent


def test_onnxruntime_session_is_thread_safe(ort_session):
    x = ort_session.input_spec.example(2, seed=1)
    expected = ort_session(x)
    results = [None] * 4

    def worker(i):
        results[i] = ort_session(x)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ort_session.thread_safe
    for got in results:
        np.testing.assert_array_equal(got, expected)
