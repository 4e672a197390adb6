"""What the terminal shows while a stage runs: our own lines and one progress display per stage.

Ray's banners, warnings, its C++ core worker's stderr lines and the output its workers forward to
the driver go to a log file instead (:func:`ray_to_log`), unless ``--verbose``. On a terminal a
stage's progress is one live ``rich`` bar with items/s and ETA; without one it is a line every
``$AIGC_PROGRESS_INTERVAL`` seconds (default 10) and a summary line when the stage ends.

Nothing here imports Ray: the CLI loads this module for every command.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, TextIO

INTERVAL_ENV = "AIGC_PROGRESS_INTERVAL"
LOG_DIR_ENV = "AIGC_LOG_DIR"
DEFAULT_INTERVAL = 10.0

_terminal: TextIO | None = None  # the real terminal while Ray's output goes to a log file
_log: TextIO | None = None  # that log file
_live: Any = None  # the rich Progress on screen now, if any
last_log: str | None = None  # the log file the last ray_to_log wrote (for the CLI's closing lines)
ray_started = False  # pipeline.runtime.ensure_ray started (or joined) a Ray in this process
verbose = False  # --verbose: Ray's lines, INFO included, stay on the terminal


def terminal() -> TextIO:
    """Where our own messages go: the real stderr, even while fd 2 and sys.stderr point at the log."""
    return _terminal or sys.stderr


def log_file() -> TextIO | None:
    """The log file Ray's output goes to now (None: Ray prints where it likes, e.g. with --verbose)."""
    return _log


def say(line: str) -> None:
    """One line of ours on the terminal's stderr (above a live progress bar, if one is shown)."""
    if _live is not None:
        _live.console.print(line, markup=False, highlight=False, soft_wrap=True)
    else:
        print(line, file=terminal(), flush=True)


def interval() -> float:
    """Seconds between progress lines without a terminal: ``$AIGC_PROGRESS_INTERVAL``, default 10."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value > 0 else DEFAULT_INTERVAL


def log_path(root: str | None, job: str, command: str, ident: str | None = None) -> str:
    """Where a command's Ray log goes: beside the run records, ``<root>/runs/<job>/``, for a local
    storage root; ``$AIGC_LOG_DIR`` when set; else ``<tmp>/aigc-logs/<job>/`` (an object-store root).
    ``aigc run`` names it after its record (``<run id or date>.log``); the other commands
    ``<command>-<id or UTC time>.log``."""
    ident = ident or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    local = root is not None and ("://" not in root or root.startswith("file://"))
    if os.environ.get(LOG_DIR_ENV):
        base = Path(os.environ[LOG_DIR_ENV])
    elif local:
        assert root is not None
        base = Path(root.removeprefix("file://")) / "runs" / job
    else:
        base = Path(tempfile.gettempdir()) / "aigc-logs" / job
    return str(base / (f"{ident}.log" if command == "run" else f"{command}-{ident}.log"))


@contextlib.contextmanager
def ray_to_log(path: str | None, verbose_: bool = False) -> Iterator[str | None]:
    """Send Ray's output to ``path`` for the duration: the C++ lines written to fd 2, the ``ray``
    loggers and ``warnings`` (both write to sys.stderr), and the worker output Ray forwards to the
    driver (:func:`pipeline.runtime.ensure_ray`). Our messages keep the real terminal (:func:`say`).

    Nothing is redirected with ``verbose_``, or when stderr is not this process's fd 2 (an in-process
    test runner captures it). An embedded Ray this process started is shut down before the terminal
    comes back, so its shutdown lines land in the log too.
    """
    global _terminal, _log, last_log, verbose
    verbose = verbose_ or verbose
    try:
        real = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        real = False
    if verbose_ or path is None or not real or _log is not None:
        yield None
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    last_log = path
    sys.stderr.flush()
    log = open(path, "a", encoding="utf-8", errors="replace", buffering=1)
    log.write(f"=== {' '.join(['aigc', *sys.argv[1:]])} at {dt.datetime.now(dt.timezone.utc).isoformat()} ===\n")
    saved_fd = os.dup(2)
    saved_stderr = sys.stderr
    real_term = open(saved_fd, "w", encoding=getattr(saved_stderr, "encoding", None) or "utf-8",
                     errors="replace", buffering=1, closefd=False)
    os.dup2(log.fileno(), 2)
    sys.stderr, _terminal, _log = log, real_term, log
    try:
        yield path
    finally:
        try:
            _shutdown_ray()
        finally:
            log.flush()
            os.dup2(saved_fd, 2)
            sys.stderr, _terminal, _log = saved_stderr, None, None
            real_term.close()
            os.close(saved_fd)
            log.close()


def _shutdown_ray() -> None:
    """Shut down (or leave) a Ray that :func:`pipeline.runtime.ensure_ray` started or joined here."""
    global ray_started
    if ray_started:
        import ray

        ray_started = False
        ray.shutdown()


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class StageProgress:
    """One stage's progress: a live rich bar on a terminal, else a line every :func:`interval` seconds,
    and a summary line at :meth:`finish`. ``enabled=False`` shows nothing."""

    def __init__(self, stage: str, total: int = 0, unit: str = "items", enabled: bool = True,
                 tty: bool | None = None):
        self.stage, self.total, self.unit, self.enabled = stage, total, unit, enabled
        self.done, self.base, self.note = 0, None, ""
        self.t0 = self.last = time.monotonic()
        self.tty = getattr(terminal(), "isatty", lambda: False)() if tty is None else tty
        self.every = interval()
        self._bar = self._task = None
        self._finished = False

    def __enter__(self) -> StageProgress:
        if self.enabled and self.tty and self.total:
            self._rich()  # the bar from the start, not from the first finished unit
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        self.finish(ok=exc_type is None)

    # -- numbers ------------------------------------------------------------------------------
    def rate(self) -> float:
        elapsed = time.monotonic() - self.t0
        return (self.done - (self.base or 0)) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        rate = self.rate()
        return (self.total - self.done) / rate if rate > 0 and self.total else None

    def update(self, n: int) -> None:
        """``n`` more units done."""
        self.set(self.done + n)

    def set(self, done: int, total: int | None = None, note: str | None = None) -> None:
        """``done`` units of ``total`` are finished; ``note`` is shown beside the figures."""
        if self.base is None:
            self.base = 0
        self.done = done
        if total is not None:
            self.total = total
        if note is not None:
            self.note = note
        if self.enabled:
            self._show()

    def line(self) -> str:
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = self.eta()
        left = f", ETA {_clock(eta)}" if eta is not None and self.done < self.total else ""
        note = f"  {self.note}" if self.note else ""
        return (f"{self.stage}: {self.done:,}/{self.total:,} {self.unit}{pct}, {self.rate():,.1f} {self.unit}/s"
                f"{left}{note}")

    # -- display ------------------------------------------------------------------------------
    def _show(self) -> None:
        if self.tty:
            self._rich()
            return
        now = time.monotonic()
        if now - self.last >= self.every and self.done < (self.total or self.done + 1):
            self.last = now
            say(self.line())

    def _rich(self) -> None:
        global _live
        if self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[unit]}"), TextColumn("{task.fields[rate]}"),
                                 TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
                                 console=Console(file=terminal()), transient=False)
            self._task = self._bar.add_task(self.stage, total=self.total or None, unit=self.unit, rate="", note="")
            self._bar.start()
            _live = self._bar
        self._bar.update(self._task, completed=self.done, total=self.total or None,
                         rate=f"{self.rate():,.1f}/s", note=self.note[:60])

    def finish(self, ok: bool = True) -> None:
        """Close the display; print the stage's summary line (when anything was counted and it succeeded)."""
        global _live
        if self._finished:
            return
        self._finished = True
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, rate=f"{self.rate():,.1f}/s")
            self._bar.stop()
            _live = None
        if self.enabled and self.done and ok:  # a failure is the error's one line, nothing more
            secs = time.monotonic() - self.t0
            say(f"{self.stage}: done {self.done:,}/{self.total:,} {self.unit} in {secs:.1f}s "
                f"({self.rate():,.1f} {self.unit}/s)" + (f"  {self.note}" if self.note else ""))

    # -- training events ----------------------------------------------------------------------
    def train_event(self, event: Any) -> None:
        """A :class:`pipeline.train.worker.Progress` event: steps of all epochs are the units."""
        if event.kind in ("wait", "start"):
            if event.kind == "start" and event.steps:
                self.base = event.epoch * event.steps
                self.t0 = time.monotonic()
                self.done, self.total = self.base, event.epochs * event.steps
            if self.enabled:
                say(f"{self.stage}: {event.line()}")
            return
        steps = event.steps or 1
        done = event.epoch * steps + (steps if event.kind == "epoch" else event.step)
        self.set(done, total=event.epochs * steps, note=event.line())
