"""Command-line output that reads well in a terminal and in a log file.

A terminal gets tqdm's live bar. A log file (stderr is not a TTY: a batch job, ``nohup``,
``2> train.log``) gets one plain line every ``LOG_EVERY_PERCENT`` percent or
``LOG_EVERY_S`` seconds, whichever comes first, instead of thousands of carriage-return
updates. ``--quiet`` (:func:`set_quiet`) turns progress off altogether.

Every command that succeeds ends with one summary line (:func:`summary_line`), built from
what the command reported with :func:`set_summary`; one that fails ends with its error.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

#: A log gets a progress line at least this often, in percent of the total.
LOG_EVERY_PERCENT = 10
#: ... and at least this often, in seconds (long steps, unknown totals).
LOG_EVERY_S = 60.0

_state: dict[str, Any] = {"quiet": False, "summary": None}


def set_quiet(quiet: bool) -> None:
    """Turn progress output off (``True``) or on for the rest of the process."""
    _state["quiet"] = bool(quiet)


def is_quiet() -> bool:
    """Whether ``--quiet`` was given."""
    return bool(_state["quiet"])


def set_summary(text: str) -> None:
    """Record what the running command achieved, e.g. ``"wrote labels.tif: 3 objects"``."""
    _state["summary"] = str(text)


def take_summary() -> str | None:
    """Return the recorded summary and forget it (one per command)."""
    text, _state["summary"] = _state["summary"], None
    return text


def summary_line(prog: str, command: str, elapsed_s: float) -> str:
    """The last line a successful command prints: ``prog command: what it did (12.3 s)``.

    Parameters
    ----------
    prog, command : str
        The program and sub-command names.
    elapsed_s : float
        Wall time of the command in seconds.
    """
    return f"{prog} {command}: {take_summary() or 'done'} ({elapsed_s:.1f} s)"


class LineProgress:
    """A tqdm look-alike for logs: one line per step of progress, never a carriage return.

    Supports the part of tqdm's API this package and pooch's downloads use: ``update``,
    ``set_postfix``, ``write``, ``reset``, ``close``, a settable ``total`` and use as a
    context manager.

    Parameters
    ----------
    total : int, optional
        Number of units; None when unknown (then lines come every ``every_s`` seconds).
    desc : str, optional
        Prefix of each line.
    unit : str
        Name of one unit ("step", "plane"); "B" counts bytes, shown in MB.
    initial : int
        Units already done (a resumed run).
    file : text stream, optional
        Where lines go; default ``sys.stderr``.
    every_percent, every_s : float
        A line is written when the done share crosses the next multiple of
        ``every_percent``, or ``every_s`` seconds after the previous line.
    """

    def __init__(self, total: int | None = None, *, desc: str | None = None, unit: str = "it",
                 initial: int = 0, file: IO[str] | None = None, every_percent: float = LOG_EVERY_PERCENT,
                 every_s: float = LOG_EVERY_S) -> None:
        self._total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.file = file
        self.every_percent = every_percent
        self.every_s = every_s
        self.postfix = ""
        self.closed = False
        self._start = time.monotonic()
        self._last_line = self._start
        self._next_percent = self._percent_step_after(self._percent())
        self._last_n = initial

    @property
    def total(self) -> int | None:
        return self._total

    @total.setter
    def total(self, value: int | None) -> None:  # pooch sets it once the size is known
        self._total = value
        self._next_percent = self._percent_step_after(self._percent())

    def reset(self, total: int | None = None) -> None:
        """Start counting again from 0 (tqdm's ``reset``), keeping the total unless given."""
        self.n = 0
        self._last_n = 0
        if total is not None:
            self._total = total
        self._next_percent = self._percent_step_after(self._percent())

    def _stream(self) -> IO[str]:
        return self.file if self.file is not None else sys.stderr

    def _percent(self) -> float | None:
        if not self.total:
            return None
        return 100.0 * self.n / self.total

    def _percent_step_after(self, percent: float | None) -> float:
        if percent is None:
            return float("inf")
        return (int(percent // self.every_percent) + 1) * self.every_percent

    def _line(self) -> str:
        elapsed = time.monotonic() - self._start
        head = f"{self.desc}: " if self.desc else ""
        if self.unit == "B":
            done, total, unit = f"{self.n / 1e6:.1f}", f"{(self.total or 0) / 1e6:.1f}", " MB"
        else:
            done, total, unit = str(self.n), str(self.total), f" {self.unit}s"
        if self.total:
            count = f"{done}/{total}{unit} ({self._percent():.0f}%)"
        else:
            count = f"{done}{unit}"
        tail = f", {self.postfix}" if self.postfix else ""
        return f"{head}{count}, {elapsed:.0f} s{tail}"

    def _emit(self) -> None:
        print(self._line(), file=self._stream(), flush=True)
        self._last_line = time.monotonic()
        self._last_n = self.n
        self._next_percent = self._percent_step_after(self._percent())

    def update(self, n: int = 1) -> None:
        """Add ``n`` done units; write a line if a percent step or ``every_s`` was passed."""
        self.n += n
        percent = self._percent()
        if (percent is not None and percent >= self._next_percent) or \
                time.monotonic() - self._last_line >= self.every_s:
            self._emit()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Extra ``key=value`` pairs shown at the end of the next line (as tqdm's)."""
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{key}={value}" for key, value in items.items())

    def write(self, text: str, file: IO[str] | None = None, end: str = "\n") -> None:
        """Write a message line (tqdm.write's signature)."""
        print(text, file=file if file is not None else self._stream(), end=end, flush=True)

    def close(self) -> None:
        """Write the last line, unless the last one already showed the final count."""
        if self.closed:
            return
        self.closed = True
        if self.n != self._last_n or self.n == 0:
            self._emit()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(total: int | None = None, *, desc: str | None = None, unit: str = "it", initial: int = 0,
                 disable: bool = False, file: IO[str] | None = None) -> Any:
    """A progress bar for the command line: tqdm in a terminal, plain lines in a log.

    Parameters
    ----------
    total : int, optional
        Number of units.
    desc : str, optional
        Label before the bar.
    unit : str
        Name of one unit.
    initial : int
        Units already done.
    disable : bool
        No output at all (also when :func:`set_quiet` was called).
    file : text stream, optional
        Default ``sys.stderr``; its ``isatty()`` picks the bar or the lines.

    Returns
    -------
    A ``tqdm`` bar or a :class:`LineProgress`; both have ``update``, ``set_postfix``,
    ``write`` and ``close``.
    """
    from tqdm import tqdm

    if disable or is_quiet():
        return tqdm(total=total, initial=initial, disable=True)
    stream = file if file is not None else sys.stderr
    if type(stream).__module__.startswith("ipykernel"):
        from tqdm.auto import tqdm as notebook_tqdm  # a widget in Jupyter

        return notebook_tqdm(total=total, desc=desc, unit=unit, initial=initial)
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=file, dynamic_ncols=True,
                    unit_scale=unit == "B")
    return LineProgress(total, desc=desc, unit=unit, initial=initial, file=file)
