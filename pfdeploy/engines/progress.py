"""Build progress: TensorRT's IProgressMonitor callbacks drive one tqdm bar per active phase.

`PhaseBars` holds the logic (no TensorRT); `progress_monitor(trt)` wraps it in a trt.IProgressMonitor
subclass, created only when TensorRT is present.
"""

from __future__ import annotations

import threading


class PhaseBars:
    """One tqdm bar per optimizer phase, nested under its parent; thread-safe (TensorRT may call from
    several threads). `cancel()` makes the next `step()` return False, which asks TensorRT to stop."""

    def __init__(self, enabled: bool = True, file=None):
        self.enabled = enabled
        self.file = file
        self.bars: dict[str, object] = {}
        self.depth: dict[str, int] = {}
        self.cancelled = False
        self._lock = threading.Lock()

    def start(self, phase: str, parent: str | None, num_steps: int) -> None:
        from tqdm.auto import tqdm

        with self._lock:
            level = self.depth.get(parent, -1) + 1 if parent else 0
            self.depth[phase] = level
            self.bars[phase] = tqdm(
                total=max(int(num_steps), 1),
                desc=("  " * level) + phase,
                position=level,
                leave=level == 0,
                disable=not self.enabled,
                file=self.file,
            )

    def step(self, phase: str, step: int) -> bool:
        with self._lock:
            bar = self.bars.get(phase)
            if bar is not None:
                bar.n = min(int(step) + 1, bar.total)
                bar.refresh()
            return not self.cancelled

    def finish(self, phase: str) -> None:
        with self._lock:
            bar = self.bars.pop(phase, None)
            self.depth.pop(phase, None)
            if bar is not None:
                bar.n = bar.total
                bar.close()

    def cancel(self) -> None:
        self.cancelled = True

    def close(self) -> None:
        for phase in list(self.bars):
            self.finish(phase)


def progress_monitor(trt, bars: PhaseBars):
    """A trt.IProgressMonitor that forwards phase_start/step_complete/phase_finish to `bars`.

    Keep the returned object alive for the whole build (TensorRT holds only a reference).
    """

    class TqdmProgressMonitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            try:
                bars.start(phase_name, parent_phase, num_steps)
            except KeyboardInterrupt:  # callbacks cannot raise into TensorRT; cancel at the next step
                bars.cancel()

        def step_complete(self, phase_name, step):
            try:
                return bars.step(phase_name, step)
            except KeyboardInterrupt:
                bars.cancel()
                return False

        def phase_finish(self, phase_name):
            try:
                bars.finish(phase_name)
            except KeyboardInterrupt:
                bars.cancel()

    return TqdmProgressMonitor()
