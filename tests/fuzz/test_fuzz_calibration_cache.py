"""The calibration cache: poisoned ranges are a miss that is recomputed, never trusted (issue 19, item 4),
and fuzzing the cache reader (`cached_ranges_usable`) with damaged and type-confused files (issue 20).

Before: ranges of all 0, +Inf, NaN, lowest > highest or +-1e30 were "reused" (exit 0) into a graph whose
logits were all zero or -inf, NaN ranges gave an AssertionError from onnxruntime and `"smooth_quant": true`
a ValueError.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from tiny_graphs import calibration_array, conv_classifier, pfdeploy_metadata

from fuzz.harness import check_reader, fuzz_tests, mutated_json
from pfdeploy.calibration import int8_from_onnx
from pfdeploy.calibration.quantize import DIGEST_KEY, cached_ranges, cached_ranges_usable, signed_cache


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> dict:
    """The tiny classifier, its calibration images, a good cache (minmax) and the INT8 graph made from it."""
    folder = tmp_path_factory.mktemp("calib")
    model = conv_classifier(folder / "m.onnx", pfdeploy_metadata())
    calib = calibration_array(folder / "calib.npy")
    out = int8_from_onnx(model, calib, folder / "ref.int8.onnx", num_images=16, method="minmax",
                         cache_dir=folder / "cache")
    [cache] = (folder / "cache" / "calibration").glob("*.json")
    return {"model": model, "calib": calib, "cache": cache, "good": cache.read_text(), "folder": folder,
            "reference": _initializers(out)}


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def _poison(text: str, change, sign: bool = True) -> str:
    """The cache with every range changed; `sign`: with a digest that matches (as if whoever edited it knew
    to rewrite it), so that the range checks themselves are what must catch it."""
    data = json.loads(text)
    for tensor in data["data"].values():
        change(tensor)
    return json.dumps(signed_cache(data) if sign else data)


def _scaled(low_factor, high_factor):
    def change(tensor):
        for key, factor in (("lowest", low_factor), ("highest", high_factor)):
            tensor[key]["data"] = [tensor[key]["data"][0] * factor]
    return change


def _narrowed(factor):
    def change(tensor):
        low, high = tensor["lowest"]["data"][0], tensor["highest"]["data"][0]
        middle, half = (low + high) / 2, (high - low) / 2 / factor
        tensor["lowest"]["data"], tensor["highest"]["data"] = [middle - half], [middle + half]
    return change


def _set(low, high):
    def change(tensor):
        tensor["lowest"], tensor["highest"] = {"data": [low], "dtype": "float32", "CLS": "numpy.array"}, \
            {"data": [high], "dtype": "float32", "CLS": "numpy.array"}
    return change


POISONS = {
    "all zero": lambda t: _poison(t, _set(0.0, 0.0)),
    "+inf": lambda t: _poison(t, _set(0.0, float("inf"))),
    "nan": lambda t: _poison(t, _set(float("nan"), float("nan"))),
    "lowest > highest": lambda t: _poison(t, _set(5.0, -5.0)),
    "+-1e30": lambda t: _poison(t, _set(-1e30, 1e30)),
    "16x wider": lambda t: _poison(t, _scaled(16.0, 16.0)),
    "1/500 of the width": lambda t: _poison(t, _narrowed(500.0)),
    "half the width": lambda t: _poison(t, _narrowed(2.0)),
    "1.5x wider, digest not rewritten": lambda t: _poison(t, _scaled(1.5, 1.5), sign=False),
    "no digest": lambda t: json.dumps({k: v for k, v in json.loads(t).items() if k != DIGEST_KEY}),
    "smooth_quant": lambda t: json.dumps(signed_cache({**json.loads(t), "smooth_quant": True})),
    "another graph's tensors": lambda t: json.dumps(signed_cache({**json.loads(t), "data": {
        f"other_{k}": v for k, v in json.loads(t)["data"].items()}})),
    "deep": lambda t: '{"data": ' + "[" * 100_000 + "]" * 100_000 + "}",
}


@pytest.mark.parametrize("poison", list(POISONS))
def test_a_poisoned_cache_is_recomputed_and_the_output_is_unchanged(graph, poison, tmp_path, caplog):
    graph["cache"].write_text(POISONS[poison](graph["good"]))
    with caplog.at_level(logging.WARNING):
        out = int8_from_onnx(graph["model"], graph["calib"], tmp_path / "m.int8.onnx", num_images=16, method="minmax",
                             cache_dir=graph["folder"] / "cache")
    assert "recomputing" in caplog.text and "ranges reused" not in caplog.text
    got = _initializers(out)
    assert got.keys() == graph["reference"].keys()
    for name, value in graph["reference"].items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert not isinstance(cached_ranges(graph["cache"], "minmax"), str)  # rewritten with good ranges


def test_a_good_cache_is_reused(graph, tmp_path, caplog):
    graph["cache"].write_text(graph["good"])
    with caplog.at_level(logging.INFO):
        out = int8_from_onnx(graph["model"], graph["calib"], tmp_path / "m.int8.onnx", num_images=16, method="minmax",
                             cache_dir=graph["folder"] / "cache")
    assert "calibration ranges reused from" in caplog.text and "recomputing" not in caplog.text
    assert all(np.array_equal(_initializers(out)[k], v) for k, v in graph["reference"].items())


# --- the fuzz harness: the cache reader on its own, judged against the graph's real ranges ------------------


def _seed() -> tuple[str, dict]:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        model = conv_classifier(folder / "m.onnx", pfdeploy_metadata())
        calib = calibration_array(folder / "calib.npy")
        int8_from_onnx(model, calib, folder / "o.onnx", num_images=16, method="entropy", cache_dir=folder / "cache")
        [cache] = (folder / "cache" / "calibration").glob("*.json")
        return cache.read_text(), cached_ranges(cache, "entropy")


SEED_TEXT, SEED_RANGES = _seed()


def _usable_means_usable(path: Path):
    def valid(usable: bool) -> None:
        assert isinstance(usable, bool)
        if usable:
            from onnxruntime.quantization.calibrate import load_tensors_data

            ranges = cached_ranges(path, "entropy")
            assert set(ranges) == set(SEED_RANGES) and all(np.isfinite(v).all() and v[0] <= v[1]
                                                           for v in ranges.values())
            assert load_tensors_data(path).data.keys() == ranges.keys()

    return valid


def check(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as name:
        path = Path(name) / "ranges.json"
        path.write_bytes(text)
        check_reader("calibration cache", lambda: cached_ranges_usable(path, "entropy", SEED_RANGES), Path(name),
                     _usable_means_usable(path))


test_fuzz_calibration_cache, test_fuzz_calibration_cache_long = fuzz_tests(
    "calibration_cache", mutated_json(json.loads(SEED_TEXT)), check)


def test_the_seed_cache_is_usable(tmp_path):
    path = tmp_path / "ranges.json"
    path.write_text(SEED_TEXT)
    assert cached_ranges_usable(path, "entropy", SEED_RANGES)
    assert not cached_ranges_usable(path, "minmax", SEED_RANGES)  # another method's ranges
