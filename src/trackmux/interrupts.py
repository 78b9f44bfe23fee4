"""Ctrl-C and SIGTERM during ``train()``: what the signals raise, when they may, and the
checkpoint written when they end training (``save_on_interrupt``).

A job of its own because signal handling has rules the training loop should not carry:
handlers only on the main thread and only where the user left Python's defaults, a *hold*
around parameter updates, checkpoint writes and the trackers' closing (a signal then is
raised when the hold ends), and SIGTERM handed back to the handler that was there before
once the trackers are closed. The loop itself only enters :class:`_Interrupts` and holds it
(``Trainer.train`` and ``Trainer._held``). :class:`InterruptMethods` is a mixin of
:class:`~trackmux.trainer.Trainer`; :class:`Terminated` stays importable from
:mod:`trackmux.trainer`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from . import checkpoints
from .trainer_state import STATE_FILE_NAME

__all__ = ["InterruptMethods", "Terminated"]

# the Trainer's messages keep the logger name they always had, whichever module writes them
logger = logging.getLogger("trackmux.trainer")


class InterruptMethods:
    """The interrupt checkpoint of :class:`~trackmux.trainer.Trainer` (a mixin: it uses the
    Trainer's state, arguments, checkpoint writer and events)."""

    def _save_on_interrupt(self) -> None:
        state, args = self.state, self.args
        if state.global_step == 0:
            logger.warning("save_on_interrupt: no step was completed, no checkpoint written")
            return
        if self.distributed.enabled:
            # the ranks were interrupted at different points: a save's barrier could hang
            logger.warning(
                "save_on_interrupt is not supported under torch.distributed: no checkpoint "
                "written; the last regular checkpoint is the one to resume from"
            )
            return
        directory = checkpoints.checkpoint_directory(args.output_dir, state.global_step)
        if os.path.isfile(os.path.join(directory, STATE_FILE_NAME)):
            logger.warning("save_on_interrupt: %s is already saved", directory)
            return
        interrupts = self._interrupts
        interrupts.hold()  # a second Ctrl-C must not leave a half-written checkpoint
        try:
            self._save_checkpoint()
            self._event("on_save")
        except Exception:
            logger.exception("save_on_interrupt: writing %s failed", directory)
            return
        finally:
            interrupts.holding -= 1
            interrupts.forget()
        logger.warning(
            "save_on_interrupt: saved %s; resume with train(resume_from_checkpoint=True)",
            directory,
        )


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers and ``kill`` send) during training: a ``KeyboardInterrupt``,
    so the code that handles Ctrl-C handles it too and trackers close their runs as killed.
    Once they are closed, ``train()`` hands the signal back to the handler that was there
    before (by default: the process ends by SIGTERM, exit status -15, 143 in a shell)."""

    def __init__(self, signum: int = signal.SIGTERM):
        self.signal = signal.Signals(signum)
        super().__init__(f"received signal {self.signal.name}")


class _Interrupts:
    """SIGINT and SIGTERM while training, on the main thread.

    Either raises at once (KeyboardInterrupt, :class:`Terminated`), except while it is
    *held*: during a parameter update and a checkpoint write, so a checkpoint never captures
    a half-applied step or is left half-written, and while the trackers close, so closing
    them is never cut short. A signal that arrives then is raised when the hold ends.
    A SIGINT handler other than Python's default, or a SIGTERM one set to ignore, is left as
    the user installed it."""

    def __init__(self):
        self.holding = 0
        self.pending: int | None = None
        self.previous: dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        # None: a handler set outside Python, which could not be put back afterwards
        if signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, None):
            self.previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info):
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)
        return False

    def _handle(self, signum, frame):
        if self.holding:
            if self.pending is None:
                self.pending = signum
            return
        raise _interrupt(signum)

    def hold(self) -> None:
        self.holding += 1

    def release(self) -> None:
        """End one hold; raise the signal that arrived meanwhile, if any."""
        self.holding -= 1
        if not self.holding and self.pending is not None:
            signum, self.pending = self.pending, None
            raise _interrupt(signum)

    def forget(self) -> None:
        """Drop what arrived during a hold: training is being interrupted already."""
        self.pending = None

    def pass_on(self, interrupt: Terminated) -> None:
        """After the trackers closed: give SIGTERM to the handler that was installed before
        training (the default one ends the process, as it would have without trackmux)."""
        previous = self.previous.get(signal.SIGTERM)
        if previous is None:  # not installed by us (another thread, or SIGTERM ignored)
            return
        signal.signal(signal.SIGTERM, previous)
        if previous is signal.SIG_DFL:
            for stream in (sys.stdout, sys.stderr):  # the process ends inside os.kill
                try:
                    stream.flush()
                except (AttributeError, OSError, ValueError):
                    pass
            os.kill(os.getpid(), interrupt.signal)
        elif callable(previous):
            previous(interrupt.signal, None)


def _interrupt(signum: int) -> KeyboardInterrupt:
    return Terminated(signum) if signum == signal.SIGTERM else KeyboardInterrupt()
