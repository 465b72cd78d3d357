"""Model configs are checked per family before anything is built (issue 20): one line naming the field."""

from __future__ import annotations

import time

import pytest
import torch

from pfdeploy.cli import main
from pfdeploy.deploy.options import parse_overrides
from pfdeploy.errors import PfdeployError
from pfdeploy.limits import MAX_MODEL_BYTES
from pfdeploy.models import create_model

# The cases of issue 20 that gave a RuntimeError (some after trying to allocate 240 GB or 1 TB), or that
# built a model without blocks, or failed with "not all arguments converted during string formatting".
BAD_CONFIGS = [
    ("r50", {"base_width": -1}, "base_width must be in 1..65536, got -1"),
    ("r50", {"base_width": 0}, "base_width must be in 1..65536, got 0"),
    ("r50_hybrid", {"img_size": 1}, "img_size must be in 32..4096, got 1"),
    ("r50_hybrid", {"img_size": 100000}, "img_size must be in 32..4096, got 100000"),
    ("r50", {"num_classes": 1_000_000_000}, "num_classes must be in 1..1000000, got 1000000000"),
    ("vit_ti_max", {"embed_dim": 63, "num_heads": 2}, "num_heads 2 must divide embed_dim 63"),
    ("r50", {"layers": [0, 0, 0, 0]}, "every layers entry must be in 1..1024, got [0, 0, 0, 0]"),
    ("r50", {"layers": [-1, 1, 1, 1]}, "every layers entry must be in 1..1024, got [-1, 1, 1, 1]"),
    ("r50", {"layers": [1, 1, 1]}, "layers must be a list of 4 integers, got [1, 1, 1]"),
    ("r50", {"layers": [[1], 1, 1, 1]}, "layers must be a list of 4 integers"),
    ("r50", {"base_width": "8"}, "base_width must be an integer, got '8' (str)"),
    ("r50", {"base_width": True}, "base_width must be an integer, got True (bool)"),
    ("r50", {"kind": ["max"]}, "kind must be one of conv, max, hybrid"),
    ("vit_ti_max", {"img_size": 100}, "img_size 100 must be a multiple of patch_size 16"),
    ("vit_ti_max", {"patch_size": 0}, "patch_size must be in 1..4096, got 0"),
    ("vit_ti_max", {"depth": 0}, "depth must be in 1..1024, got 0"),
    ("vit_ti_max", {"mlp_ratio": float("nan")}, "mlp_ratio must be a number in (0, 64]"),
    ("vit_ti_max", {"pooling": "max"}, "pooling must be true or false, got 'max'"),
    ("pit_ti_max", {"heads": [2, 3, 8]}, "each stage's heads must be a multiple of the previous stage's"),
    ("pit_ti_max", {"depth": [2, 6]}, "depth [2, 6] and heads [2, 4, 8] must have one entry per stage"),
    ("pit_ti_max", {"img_size": 8}, "img_size 8 is smaller than patch_size 16"),
    ("pit_ti_max", {"stride": -8}, "stride must be in 1..4096, got -8"),
    ("r50", {"in_chans": 1}, "in_chans must be 3 (pfdeploy deploys RGB image models), got 1"),  # export crashed
    ("vit_ti_max", {"in_chans": 4}, "in_chans must be 3"),
    ("pit_ti_max", {"in_chans": 3.0}, "in_chans must be 3"),
]


@pytest.mark.parametrize("name, overrides, message", BAD_CONFIGS, ids=[str(c[1])[:40] for c in BAD_CONFIGS])
def test_bad_model_values_are_one_line_before_anything_is_built(name, overrides, message):
    overrides = dict(overrides)
    classes = overrides.pop("num_classes", 1000)
    start = time.perf_counter()
    with pytest.raises(PfdeployError, match="bad model config") as err:
        create_model(name, num_classes=classes, **overrides)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert time.perf_counter() - start < 5  # refused, not built (some took minutes allocating)


def test_the_memory_estimate_refuses_what_would_not_fit():
    with pytest.raises(PfdeployError, match=r"r50 needs about 359\.\d GiB .* over pfdeploy's limit of 8 GiB"):
        create_model("r50", base_width=4096)
    with pytest.raises(PfdeployError, match=r"vit_b_max needs about \d+\.\d GiB"):
        create_model("vit_b_max", img_size=4096)  # 65,536 tokens: a 12-head attention matrix of 206 GB


def test_the_estimate_counts_the_real_parameters():
    from pfdeploy.models.registry import model_args, model_bytes

    args = model_args("r50")
    parameters = sum(p.numel() for p in create_model("r50").parameters())
    activation = 64 * 224 * 224  # the stem's output, as large as layer1's
    assert model_bytes("resnet", args) == 4 * (parameters + activation) < MAX_MODEL_BYTES


def test_good_configs_still_build():
    assert create_model("r50", num_classes=4, layers=[1, 1, 1, 1], base_width=8, img_size=32).fc.out_features == 4
    assert create_model("vit_ti_max", img_size=32, patch_size=4, embed_dim=64, num_heads=2, depth=4).pos_embed.shape \
        == (1, 64, 64)
    assert create_model("pit_ti_max", base_dim=8, depth=(2, 2, 2), heads=(1, 2, 2), patch_size=4, stride=4,
                        img_size=32).num_features == 16
    with torch.device("meta"):  # what suggest_model does: no memory
        assert create_model("vit_b_max").num_features == 768


def test_deep_json_override_is_one_line():
    deep = "layers=" + "[" * 5000 + "]" * 5000  # a RecursionError traceback today
    with pytest.raises(PfdeployError, match="--override layers nests deeper than 64 levels"):
        parse_overrides([deep])
    with pytest.raises(PfdeployError, match="nests deeper than 64 levels"):
        parse_overrides(["layers=" + "[" * 70 + "]" * 70])
    assert parse_overrides(["pooling=max", "layers=[1,1,1,1]"]) == {"pooling": "max", "layers": [1, 1, 1, 1]}
    with pytest.raises(PfdeployError, match="use --num-classes|with --num-classes N"):
        parse_overrides(["num_classes=5"])  # a TypeError (num_classes given twice) in create_model today


@pytest.mark.parametrize("args, message", [
    (["--override", "base_width=-1"], "base_width must be in 1..65536, got -1"),
    (["--override", 'base_width="8"'], "base_width must be an integer, got '8'"),
    (["--img-size", "1"], "img_size must be in 32..4096, got 1"),
    (["--num-classes", "1000000000"], "num_classes must be in 1..1000000"),
    (["--override", "layers=" + "[" * 5000 + "]" * 5000], "nests deeper than 64 levels"),
])
def test_cli_export_with_bad_values_prints_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "m.onnx"
    assert main(["export", "r50_hybrid", "-o", str(out), *args]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
