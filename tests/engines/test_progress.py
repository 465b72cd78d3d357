"""PhaseBars: the logic behind the TensorRT progress monitor, driven with the same call sequence."""

from __future__ import annotations

import io

from pfdeploy.engines.progress import PhaseBars


def test_nested_phases_track_steps_and_close():
    out = io.StringIO()
    bars = PhaseBars(enabled=True, file=out)
    bars.start("Building engine", None, 3)
    bars.start("Tactic selection", "Building engine", 10)
    assert bars.depth == {"Building engine": 0, "Tactic selection": 1}
    for step in range(10):
        assert bars.step("Tactic selection", step) is True
    assert bars.bars["Tactic selection"].n == 10
    bars.finish("Tactic selection")
    assert bars.step("Building engine", 0) is True and bars.bars["Building engine"].n == 1
    bars.finish("Building engine")
    assert bars.bars == {} and bars.depth == {}
    assert "Tactic selection" in out.getvalue()


def test_cancel_asks_tensorrt_to_stop_and_unknown_phases_are_harmless():
    bars = PhaseBars(enabled=False)
    assert bars.step("never started", 3) is True
    bars.finish("never started")
    bars.start("p", None, 0)  # TensorRT promises >0 steps; a zero still gives a usable bar
    bars.cancel()
    assert bars.step("p", 0) is False
    bars.close()
    assert bars.bars == {}
