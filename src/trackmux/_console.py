"""Writing above a progress bar.

While the training bar is shown, every line that reaches the terminal (``print``, a warning,
a logging handler, a tracker backend printing from its worker thread) is written above the
bar: the bar is cleared, the line written, the bar drawn again. Without this a line written
while the bar sits at the end of the terminal line is glued onto it
(``...it/s]codecarbon: ...``).

``sys.stdout`` and ``sys.stderr`` are replaced by :class:`AboveBar` streams for as long as the
bar is shown, and logging handlers already writing to them are pointed at those streams;
everything is put back when the bar closes. Output is passed on line by line (a thread's
partial line waits for its end), so two threads never mix inside one line.
"""

from __future__ import annotations

import io
import logging
import sys
import threading


class AboveBar(io.TextIOBase):
    """A text stream that writes whole lines above ``bar`` while active, and passes
    everything straight to ``stream`` once deactivated (a handler created while the bar was
    shown may keep this object)."""

    def __init__(self, bar, stream):
        self.bar = bar
        self.stream = stream
        self.active = True
        self._partial: dict[int, str] = {}  # thread id -> its line so far
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        if not self.active:
            return self.stream.write(text)
        key = threading.get_ident()
        with self._lock:
            pending = self._partial.pop(key, "") + text
            complete, newline, rest = pending.rpartition("\n")
            if rest:
                self._partial[key] = rest
        if newline:
            self._emit(complete + "\n")
        return len(text)

    def _emit(self, text: str) -> None:
        from tqdm import tqdm

        bar = self.bar
        with tqdm.get_lock():
            shown = self.active and not getattr(bar, "disable", True)
            if shown:
                bar.clear(nolock=True)
            self.stream.write(text)
            self.stream.flush()
            if shown:
                bar.refresh(nolock=True)

    def finish(self) -> None:
        """Write what is left of every thread's line, then pass everything straight on."""
        with self._lock:
            left = "".join(self._partial.values())
            self._partial.clear()
        if left:
            self._emit(left + "\n")
        self.active = False

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self):
        return getattr(self.stream, "encoding", "utf-8")

    def __getattr__(self, name):
        return getattr(self.stream, name)


class BarConsole:
    """Routes the process's terminal output above ``bar`` from :meth:`start` to :meth:`stop`."""

    def __init__(self, bar):
        self.bar = bar
        self.stdout = sys.stdout
        self.stderr = sys.stderr
        self._streams: list[AboveBar] = []
        self._handlers: list[tuple[logging.StreamHandler, object]] = []

    def start(self) -> BarConsole:
        out, err = AboveBar(self.bar, self.stdout), AboveBar(self.bar, self.stderr)
        self._streams = [out, err]
        replacement = {id(self.stdout): out, id(self.stderr): err}
        for handler in _stream_handlers():
            stream = replacement.get(id(getattr(handler, "stream", None)))
            if stream is None:
                continue
            original = handler.stream
            try:
                handler.setStream(stream)
            except (AttributeError, TypeError):
                # a handler whose stream is a read-only property (some libraries' own
                # subclasses pick the stream at each record): it follows sys.stdout/stderr
                continue
            self._handlers.append((handler, original))
        sys.stdout, sys.stderr = out, err
        return self

    def write(self, text: str, stream=None) -> None:
        """A line of trackmux's own (a log dict) above the bar, on stdout by default."""
        target = self._streams[0] if self._streams else self.stdout
        if stream is self.stderr and self._streams:
            target = self._streams[1]
        target.write(text + "\n")

    def stop(self) -> None:
        if not self._streams:
            return
        # put back only what is still ours: the application may have replaced them since
        if sys.stdout is self._streams[0]:
            sys.stdout = self.stdout
        if sys.stderr is self._streams[1]:
            sys.stderr = self.stderr
        for handler, stream in self._handlers:
            if handler.stream in self._streams:
                handler.setStream(stream)
        self._handlers.clear()
        for stream in self._streams:
            stream.finish()
        self._streams = []


def _stream_handlers():
    loggers = [logging.getLogger()] + [
        logger
        for logger in list(logging.Logger.manager.loggerDict.values())
        if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in list(logger.handlers):
            # a FileHandler is a StreamHandler too, but never draws over the bar
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                yield handler
