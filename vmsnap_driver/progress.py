"""A progress bar for the commands that move whole images."""

import sys
import time


class Progress:
    """A one-line progress bar on a terminal, a line every 10 s otherwise."""

    def __init__(self, total: int, label: str, stream=sys.stderr,
                 enabled: bool = True) -> None:
        self.total = max(total, 1)
        self.label = label
        self.enabled = enabled
        self.done = 0
        self._stream = stream
        self._tty = stream.isatty()
        self._shown = 0.0
        self._started = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._shown < (0.2 if self._tty else 10):
            return
        self._shown = now
        self._draw(now)

    def _draw(self, now: float) -> None:
        fraction = min(self.done / self.total, 1.0)
        rate = self.done / max(now - self._started, 1e-6) / 2 ** 20
        bar = '#' * int(fraction * 30)
        line = ('%s [%-30s] %3d%% %8.1f MiB %6.1f MiB/s'
                % (self.label, bar, fraction * 100, self.done / 2 ** 20,
                   rate))
        self._stream.write(('\r' + line) if self._tty else line + '\n')
        self._stream.flush()

    def finish(self) -> None:
        if not self.enabled:
            return
        self._draw(time.monotonic())
        if self._tty:
            self._stream.write('\n')
