"""Progress bars for long loops: shown on a terminal, silent everywhere else.

Library code wraps a long loop in :func:`track`::

    for rec in track(records, "Indexing cases"):
        ...

A bar (one line per step, with a count and the elapsed/remaining time) is drawn on stderr only when all hold:

- stderr is a terminal (logs redirected to a file, CI, pipelines piping output: no bar, no output at all);
- quiet is off: :func:`set_quiet` (``medeff --quiet``) or the environment variable ``MEDEFF_QUIET=1``;
- the code runs in the main thread of the main process (data-loader, pool and thread-pool workers never
  draw, so the display state is touched by one thread only and needs no lock).

Otherwise :func:`track` just yields the items. A bar appears once its step has run for half a second
(``DELAY_S``, checked as items complete), so quick steps draw nothing. Log lines printed while a bar is shown
appear above it when stdout is the terminal too; a redirected stdout keeps them. A loop inside another tracked loop gets its own
line, removed when it finishes; ``transient=True`` removes an outer step's line too (low-level steps such as
reading one DICOM series, which also run inside training and would otherwise leave a line per read).

No background thread is used (the bar is redrawn as items complete, at most ten times a second), so a process
forked while a bar is shown inherits no held lock; the forked child gets the original stdout/stderr back.

Descriptions must name the step and, at most, counts or pseudonymous case ids: never a file or folder name,
which may carry a patient identifier.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["track", "Track", "set_quiet", "is_quiet", "progress_enabled"]

T = TypeVar("T")

_FALSE = ("", "0", "false", "no", "off")
_REFRESH_S = 0.1
DELAY_S = 0.5  # a step shorter than this draws nothing

_now = time.monotonic
_quiet = False
_active: Any = None  # the rich Progress being shown, or None
_users = 0  # tracked loops drawing on it


def set_quiet(quiet: bool = True) -> None:
    """Turn progress bars off (``True``) or back on (``False``) for this process."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    """Whether bars are off: :func:`set_quiet` was called with ``True`` or ``MEDEFF_QUIET`` is set (not 0/false)."""
    return _quiet or os.environ.get("MEDEFF_QUIET", "").strip().lower() not in _FALSE


def _stderr_is_terminal() -> bool:
    is_tty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(callable(is_tty) and is_tty())
    except (ValueError, OSError):  # closed or detached stream
        return False


def progress_enabled(console: Any = None) -> bool:
    """Whether :func:`track` would draw a bar now (on ``console`` when given, else on stderr)."""
    if is_quiet() or multiprocessing.parent_process() is not None:
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    if console is not None:
        return bool(console.is_terminal)
    return _stderr_is_terminal()


class Track(Generic[T]):
    """An iterable over ``iterable`` that shows a bar while it is iterated; see :func:`track`.

    Iterate it once. As a context manager (``with track(...) as items:``) the bar is also removed when the block
    leaves early.
    """

    def __init__(self, iterable: Iterable[T], description: str, total: int | None = None, *,
                 transient: bool = False, console: Any = None) -> None:
        self._iterable = iterable
        self.description = str(description)
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.total = total
        self.transient = transient
        self._console = console
        self._on = False
        self._progress: Any = None
        self._task: Any = None
        self._done = 0
        self._t0 = self._last = 0.0

    def __enter__(self) -> Track[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self._end()

    def __iter__(self) -> Iterator[T]:
        self._begin()
        try:
            for item in self._iterable:
                yield item
                self._step()
        finally:
            self._end()

    def _begin(self) -> None:
        self._on = progress_enabled(self._console)
        self._t0 = _now()
        if self._on and DELAY_S <= 0:
            self._show()

    def _step(self) -> None:
        self._done += 1
        if not self._on:
            return
        now = _now()
        if self._task is None:
            if now - self._t0 >= DELAY_S:
                self._show()
            return
        try:
            self._progress.advance(self._task)
            if now - self._last >= _REFRESH_S:
                self._progress.refresh()
                self._last = now
        except Exception:  # noqa: BLE001 - a bar must never break the work it reports on
            self._on = False

    def _show(self) -> None:
        global _active, _users
        try:
            if _active is None:
                progress = _new_progress(self._console)
                progress.start()  # refused (LiveError) while another live display, e.g. a trainer's, is shown
                _active = progress
            _users += 1
            self._progress = _active
            self._task = _active.add_task(self.description, total=self.total, completed=self._done)
            _active.refresh()
            self._last = _now()
        except Exception:  # noqa: BLE001
            self._on = False

    def _end(self) -> None:
        global _active, _users
        if self._progress is None:
            return
        progress, task = self._progress, self._task
        self._progress, self._task, self._on = None, None, False
        if progress is not _active:  # the display was reset (a forked child): nothing to undo
            return
        _users -= 1
        try:
            if _users > 0 or self.transient:
                progress.remove_task(task)  # an inner or transient loop's line goes when it ends
            if _users > 0:
                progress.refresh()
            else:
                progress.stop()  # final redraw: an outer step's line stays, complete
        except Exception:  # noqa: BLE001
            pass
        finally:
            if _users <= 0:
                _active, _users = None, 0


def track(iterable: Iterable[T], description: str, total: int | None = None, *, transient: bool = False,
          console: Any = None) -> Track[T]:
    """Iterate ``iterable``, showing a progress bar on a terminal; yields every item exactly once.

    Args:
        iterable: the items of the long step.
        description: what the step does ("Indexing cases"): no file or folder names.
        total: the number of items, when ``iterable`` has no ``len()``; None leaves the bar without an end.
        transient: remove the line when the step ends (low-level steps such as reading one series); otherwise the
            completed line stays (unless the loop runs inside another tracked loop).
        console: a ``rich.console.Console`` to draw on instead of stderr (tests).

    Returns:
        An iterable (and context manager) over the same items. Exceptions raised by ``iterable`` or by the loop
        body propagate unchanged; the bar is removed either way.
    """
    return Track(iterable, description, total, transient=transient, console=console)


def _new_progress(console: Any = None) -> Any:
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    if console is None:
        console = Console(stderr=True)
    # lines written to stdout go above the bar only when stdout is the terminal too; a redirected stdout (a log
    # file) keeps every line
    is_tty = getattr(sys.stdout, "isatty", None)
    try:
        stdout_tty = bool(callable(is_tty) and is_tty())
    except (ValueError, OSError):
        stdout_tty = False
    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, auto_refresh=False,
                    redirect_stdout=stdout_tty, redirect_stderr=True)


def _after_fork_in_child() -> None:
    """A forked child never draws: forget the parent's bar and give back the streams it had redirected."""
    global _active, _users
    if _active is None:
        return
    _active, _users = None, 0
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        original = getattr(stream, "rich_proxied_file", None)
        if original is not None:
            setattr(sys, name, original)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
