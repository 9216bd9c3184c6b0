"""What a long run shows while it works: :class:`Progress` (files super-resolved, images evaluated)."""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger(__name__)


def _bar_size() -> dict:
    """tqdm's size arguments: none (the terminal's own size, followed as it changes) unless the terminal has no
    size, as a pseudo-terminal that nobody sized has (``script``, CI runners): tqdm then hides its bar (0 rows)."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        size = os.terminal_size((0, 0))
    return {} if size.columns and size.lines else {"ncols": 100, "nrows": 24}


class Progress:
    """Work done of ``total`` items with the rate and the time left, and what runs now (:meth:`status`): a bar
    on a terminal, else a log line; either way at least every ``every`` seconds, from a heartbeat thread, so a
    long step (a diffusion method on a CPU) still shows the run is alive, in a log as on a terminal.
    ``quiet``: nothing at all (the other processes of a torchrun group)."""

    def __init__(
        self,
        total: int,
        bar: bool,
        every: float = 10.0,
        desc: str = "super-resolving",
        unit: str = "image",
        quiet: bool = False,
    ) -> None:
        import threading
        import time

        from tqdm import tqdm

        self.total, self.done, self.every, self.clock = total, 0, every, time.monotonic
        self.desc, self.unit, self.doing = desc, unit, ""
        self.start = self.last = self.clock()
        self.bar = tqdm(total=total, desc=desc, unit=unit, **_bar_size()) if bar and total > 1 and not quiet else None
        self._stop = threading.Event()
        self._beat = None
        if not quiet and total > 0:
            self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="monai-sr progress")
            self._beat.start()

    def status(self, doing: str) -> None:
        """Say what runs now (a method on an image): in the bar, and in the next log line."""
        self.doing = doing
        if self.bar is not None:
            self.bar.set_postfix_str(doing, refresh=False)

    def update(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update()
        elif self.clock() - self.last >= self.every and self.done < self.total:
            self._log()

    def _log(self) -> None:
        now = self.clock()
        self.last, took = now, now - self.start
        line = f"{self.desc}: {self.done}/{self.total} {self.unit}s"
        if self.doing:
            line += f", now {self.doing}"
        if self.done:
            left = (self.total - self.done) * took / self.done
            line += f", {took / self.done:.1f} s per {self.unit}, about {left / 60:.1f} min left"
        else:
            line += f", {took:.0f} s so far"
        logger.info(line)

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(self.every, 1.0)):
            if self.clock() - self.last < self.every:
                continue
            if self.bar is not None:
                self.last = self.clock()
                self.bar.refresh()  # the elapsed time moves on though no item finished
            else:
                self._log()

    def close(self) -> None:
        self._stop.set()
        if self.bar is not None:
            self.bar.close()
