"""Fuzzing the small readers: `fixtures.json`, the TensorRT timing cache file, and the CLI options that take
JSON (`--override`, `--preprocess`), each followed by what pfdeploy does with the value (the model config
check that runs before anything is built).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import strategies as st

from fuzz.harness import check_reader, fuzz_tests, json_text, mutated_bytes, mutated_json, no_hang
from pfdeploy.calibration.fixtures import DEFAULT_ROOT, Fixture, get_fixture, list_fixtures
from pfdeploy.calibration.preprocess import Preprocess, preprocess_from_option
from pfdeploy.deploy.options import parse_overrides
from pfdeploy.engines.engine import read_timing_cache
from pfdeploy.errors import PfdeployError
from pfdeploy.models.registry import model_args

# --- fixtures.json ------------------------------------------------------------------------------------------

FIXTURES = json.loads((DEFAULT_ROOT / "fixtures.json").read_text())


def _fixture_is_usable(folder: Path):
    def valid(fixture) -> None:
        assert isinstance(fixture, Fixture) and isinstance(fixture.preprocess, Preprocess)
        assert fixture.checkpoint.resolve().is_relative_to(folder.resolve())  # no path out of the fixtures
        # what `deploy --fixture` does next: the model config, checked before anything is built
        check_reader("fixtures.json model config",
                     lambda: model_args(fixture.model, fixture.num_classes, **fixture.overrides), folder)

    return valid


def check_fixtures(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as name:
        root = Path(name) / "trained"
        root.mkdir()
        (root / "fixtures.json").write_bytes(text)
        for fixture in ("r50_hybrid_digits", "vit_ti_max_digits"):
            check_reader("fixtures.json", lambda f=fixture: get_fixture(f, root), root.parent,
                         _fixture_is_usable(root.parent))
        check_reader("fixtures.json", lambda: list_fixtures(root), root.parent, lambda names: sorted(names))


test_fuzz_fixtures, test_fuzz_fixtures_long = fuzz_tests("fixtures", mutated_json(FIXTURES), check_fixtures)


@pytest.mark.parametrize("change, words", [
    (lambda f: f["r50_hybrid_digits"].update(num_classes="10"), "num_classes must be an integer"),
    (lambda f: f["r50_hybrid_digits"].update(overrides=[1]), "overrides must be an object"),
    (lambda f: f["r50_hybrid_digits"].update(checkpoint="/etc/passwd"), "checkpoint must be a file name relative"),
    (lambda f: f["r50_hybrid_digits"]["data"].update(val=5), "data must hold calib and val folders"),
    (lambda f: f["r50_hybrid_digits"].update(fp32_top1=None), "fp32_top1.val must be a percentage"),
    (lambda f: f["r50_hybrid_digits"]["preprocess"].update(std=[0, 0, 0]), "std must be positive"),
    (lambda f: f.update(r50_hybrid_digits="x"), "is not an object"),
])
def test_a_bad_fixture_entry_is_one_line(tmp_path, change, words):
    data = json.loads(json.dumps(FIXTURES))
    change(data)
    (tmp_path / "fixtures.json").write_text(json.dumps(data))
    with pytest.raises(PfdeployError, match="fixture 'r50_hybrid_digits'") as err:
        get_fixture("r50_hybrid_digits", tmp_path)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_deep_or_non_utf8_fixtures_json_is_one_line(tmp_path):
    (tmp_path / "fixtures.json").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(PfdeployError, match="nests deeper than 64 levels"):
        list_fixtures(tmp_path)
    (tmp_path / "fixtures.json").write_bytes(b'{"caf\xe9": 1}')
    with pytest.raises(PfdeployError, match="is not UTF-8 text"):
        list_fixtures(tmp_path)


# --- the timing cache file ----------------------------------------------------------------------------------


def check_timing_cache(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as name:
        path = Path(name) / "trt.cache"
        path.write_bytes(data)
        check_reader("timing cache", lambda: read_timing_cache(path), Path(name), lambda got: got == data)


test_fuzz_timing_cache, test_fuzz_timing_cache_long = fuzz_tests(
    "timing_cache", mutated_bytes(b"TensorRT timing cache: tactic timings" * 8), check_timing_cache)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_a_timing_cache_that_is_not_a_regular_file_is_refused(tmp_path):
    assert read_timing_cache(tmp_path / "new.cache") == b""  # a new cache starts empty
    os.mkfifo(tmp_path / "fifo.cache")  # reading it would block; writing the cache after the build replaces it
    with no_hang(20), pytest.raises(PfdeployError, match="--timing-cache .* is a FIFO, not a regular file"):
        read_timing_cache(tmp_path / "fifo.cache")
    if Path("/dev/null").exists():
        with pytest.raises(PfdeployError, match="is a device, not a regular file"):
            read_timing_cache(Path("/dev/null"))  # the build would have renamed its cache over /dev/null


# --- CLI options taking JSON: --override and --preprocess ---------------------------------------------------

OVERRIDES = {"layers": [1, 1, 1, 1], "base_width": 8, "img_size": 32}
PREPROCESS = {"size": 32, "crop_pct": 1.0, "interpolation": "bilinear", "mean": [0.3, 0.3, 0.3],
              "std": [0.35, 0.35, 0.35]}


@st.composite
def override_options(draw) -> list[str]:
    """--override KEY=VALUE arguments: the keys of a narrow ResNet with type-confused JSON (or junk) values."""
    text = draw(mutated_json(OVERRIDES)).decode("utf-8", "surrogateescape")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return [f"layers={text}"]
    if not isinstance(obj, dict):
        return [f"base_width={text}"]
    return [f"{key}={json_text(value)}" for key, value in obj.items()] or ["="]


def _config(args) -> None:
    assert isinstance(args, dict) and args["num_classes"] == 4


def check_overrides(pairs: list[str]) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        overrides = check_reader("--override", lambda: parse_overrides(pairs), folder, lambda o: isinstance(o, dict))
        if overrides is not None:
            check_reader("--override model config", lambda: model_args("r50_hybrid", 4, **overrides), folder, _config)


test_fuzz_override, test_fuzz_override_long = fuzz_tests("override", override_options(), check_overrides)


def test_an_override_key_with_a_newline_is_one_line():
    """Found by the 10,000-input run: a key holding a newline was echoed into a two-line error."""
    check_overrides(["0\n0=" + "[" * 70 + "]" * 70])
    with pytest.raises(PfdeployError, match="KEY must be a model argument name"):
        parse_overrides(["base\nwidth=8"])


def check_preprocess_option(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        value = text.decode("utf-8", "surrogateescape")
        check_reader("--preprocess", lambda: preprocess_from_option(value), folder,
                     lambda pre: isinstance(pre, Preprocess))
        path = folder / "pre.json"
        path.write_bytes(text)
        check_reader("--preprocess file", lambda: preprocess_from_option(str(path)), folder,
                     lambda pre: isinstance(pre, Preprocess))


test_fuzz_preprocess_option, test_fuzz_preprocess_option_long = fuzz_tests(
    "preprocess_option", mutated_json(PREPROCESS), check_preprocess_option)


# --- the --labels file (predict, eval, deploy) ----------------------------------------------------------------


def check_labels(data: bytes) -> None:
    from pfdeploy.runtime.predict import read_label_names

    def valid(names) -> None:
        assert isinstance(names, list) and names and all(isinstance(n, str) and n and "\n" not in n for n in names)

    with tempfile.TemporaryDirectory() as name:
        path = Path(name) / "labels.txt"
        path.write_bytes(data)
        check_reader("--labels", lambda: read_label_names(path), Path(name), valid)


test_fuzz_labels, test_fuzz_labels_long = fuzz_tests(
    "labels", mutated_bytes("\n".join(["tench", "goldfish", "great white shark", "café"]).encode()), check_labels)


# --- the metadata of a .pt2 package (runtime.load, verify, bench, info) -------------------------------------


def _pt2_seed(compression: int) -> bytes:
    """A zip laid out as an AOTInductor package holding only its metadata entry (no compiled code)."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        archive.writestr("m/data/aotinductor/model/m.wrapper_metadata.json",
                         json.dumps({"pfdeploy.model": "r50", "pfdeploy.precision": "fp32", "AOTI_DEVICE_KEY": "cpu"}))
        archive.writestr("m/data/constants/w.bin", b"\0" * 64)
    return buffer.getvalue()


def check_pt2_metadata(data: bytes) -> None:
    from pfdeploy.export.pt2 import read_pt2_metadata

    def valid(meta) -> None:
        assert isinstance(meta, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())

    with tempfile.TemporaryDirectory() as name:
        path = Path(name) / "m.pt2"
        path.write_bytes(data)
        check_reader(".pt2 metadata", lambda: read_pt2_metadata(path), Path(name), valid)


def _pt2_inputs() -> st.SearchStrategy[bytes]:
    import zipfile

    return st.one_of(mutated_bytes(_pt2_seed(zipfile.ZIP_STORED)), mutated_bytes(_pt2_seed(zipfile.ZIP_DEFLATED)))


test_fuzz_pt2_metadata, test_fuzz_pt2_metadata_long = fuzz_tests("pt2_metadata", _pt2_inputs(), check_pt2_metadata)


def test_the_pt2_seeds_are_read(tmp_path):
    import zipfile

    from pfdeploy.export.pt2 import read_pt2_metadata

    for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        (tmp_path / "m.pt2").write_bytes(_pt2_seed(compression))
        assert read_pt2_metadata(tmp_path / "m.pt2")["pfdeploy.model"] == "r50"
