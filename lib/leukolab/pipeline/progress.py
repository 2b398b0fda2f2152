"""Progress of a pipeline run: a line per task (queued, running with its elapsed time, cached, done, failed).

In a terminal or a notebook the lines are live (``tqdm.auto``: text bars in a
terminal, widgets in Jupyter) and the running ones tick every second; in a log
file each change is a new line, and a running task repeats its line every minute.
"""

from __future__ import annotations

import sys
import threading
import time

from tqdm.auto import tqdm

HEARTBEAT_S = 60


class Progress:
    def __init__(self, names: list[str], stream=None, live: bool | None = None):
        self.stream = stream or sys.stderr
        self.live = live if live is not None else (self.stream.isatty() or "ipykernel" in sys.modules)
        self.width = max([len(n) for n in names] + [4])
        self.states = {name: "queued" for name in names}
        self.started: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if self.live:
            self.bars = {name: tqdm(total=None, bar_format="{desc}", position=i, leave=True, file=self.stream)
                         for i, name in enumerate(names)}
            for name in names:
                self._show(name)
        else:
            print(f"queued: {', '.join(names)}", file=self.stream, flush=True)
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self._ticker.start()

    def update(self, name: str, state: str, detail: str = "") -> None:
        """Set a task's state (``running`` starts its clock; others end it) and show it."""
        with self._lock:
            if state == "running":
                self.started[name] = time.monotonic()
            elif name in self.started:
                detail = f"in {time.monotonic() - self.started.pop(name):.1f} s" + (f": {detail}" if detail else "")
            self.states[name] = f"{state} {detail}".strip()
            self._show(name)

    def close(self) -> None:
        self._stop.set()
        self._ticker.join()
        if self.live:
            for bar in self.bars.values():
                bar.close()

    def _line(self, name: str) -> str:
        state = self.states[name]
        if name in self.started:
            state = f"running {time.monotonic() - self.started[name]:.0f} s"
        return f"{name:<{self.width}}  {state}"

    def _show(self, name: str) -> None:
        if self.live:
            self.bars[name].set_description_str(self._line(name), refresh=True)
        else:
            print(self._line(name), file=self.stream, flush=True)

    def _tick(self) -> None:
        period = 1 if self.live else HEARTBEAT_S
        while not self._stop.wait(period):
            with self._lock:
                for name in list(self.started):
                    self._show(name)
