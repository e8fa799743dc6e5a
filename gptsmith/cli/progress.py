"""The one progress display of the command line, always on stderr (stdout keeps the results).

On a terminal it is a tqdm bar. Anywhere else (a log file, a pipe, CI) a bar's ``\\r`` frames would
fill the log, so a plain line is printed instead every ``1/LINES`` of the way (and at the end).
"""

from __future__ import annotations

import sys
from typing import Any

LINES = 10  # plain lines per run when stderr is not a terminal


class Progress:
    """Progress towards ``total`` units (None: unknown), shown on stderr; see the module docstring."""

    def __init__(self, total: int | None, *, initial: int = 0, unit: str = "step", desc: str = "",
                 unit_scale: bool = False, leave: bool = True) -> None:
        self.total, self.unit, self.desc = total, unit, desc
        self.done = initial
        self.bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit=unit, desc=desc or None, unit_scale=unit_scale,
                            file=sys.stderr, dynamic_ncols=True, leave=leave)
        self.every = max(1, (total - initial) // LINES) if total else None
        self.next_line = initial + (self.every or 0)

    def update(self, done: int, postfix: str = "") -> None:
        """Move to ``done`` units, with ``postfix`` (e.g. the loss) shown beside the count."""
        self.done = done
        if self.bar is not None:
            self.bar.set_postfix_str(postfix, refresh=False)  # the numbers first, then the redraw
            self.bar.update(done - self.bar.n)
        elif self.every is not None and (done >= self.next_line or done == self.total):
            while self.next_line <= done:
                self.next_line += self.every
            label = f"{self.desc}: " if self.desc else ""
            tail = f" | {postfix}" if postfix else ""
            print(f"{label}{self.unit} {done:,}/{self.total:,}{tail}", file=sys.stderr, flush=True)

    def set_total(self, total: int) -> None:
        """A new ``total`` (a time-budgeted run learns its length after the first steps): the bar
        redraws, and plain lines keep their ``1/LINES`` spacing of what is left."""
        self.total = total
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()
        else:
            self.every = max(1, (total - self.done) // LINES)
            self.next_line = self.done + self.every

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
