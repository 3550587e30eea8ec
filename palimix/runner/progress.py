"""The training progress bar: step, loss, steps/s, examples/s and ETA.

On a terminal it is a live rich progress bar; otherwise (CI logs, pipes) one plain
line per logging interval, so logs stay readable.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total_steps: int, start_step: int, batch_size: int, *, enabled: bool = True,
                 description: str = "train"):
        self.total = total_steps
        self.start_step = start_step
        self.batch_size = batch_size
        self.enabled = enabled
        self._live = None
        self._start_time = time.perf_counter()
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                       TextColumn, TimeElapsedColumn, TimeRemainingColumn)

            self._live = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[steps_per_s]} steps/s"),
                TextColumn("{task.fields[examples_per_s]} ex/s"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=Console(stderr=True), transient=False)
            self._task = self._live.add_task(description, total=total_steps, completed=start_step,
                                             loss="-", steps_per_s="-", examples_per_s="-")
            self._live.start()

    def update(self, step: int, loss: float, steps_per_s: float) -> None:
        if not self.enabled:
            return
        examples_per_s = steps_per_s * self.batch_size
        if self._live is not None:
            self._live.update(self._task, completed=step, loss=f"{loss:.4f}",
                              steps_per_s=f"{steps_per_s:.1f}", examples_per_s=f"{examples_per_s:.0f}")
            return
        remaining = (self.total - step) / steps_per_s if steps_per_s > 0 else float("inf")
        eta = time.strftime("%M:%S", time.gmtime(remaining)) if remaining < 360000 else "?"
        print(f"step {step}/{self.total}  loss {loss:.4f}  {steps_per_s:.2f} steps/s  "
              f"{examples_per_s:.1f} examples/s  ETA {eta}", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._live is not None:
            self._live.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
