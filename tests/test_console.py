"""The console while a progress bar is shown: every line goes above the bar, never onto it;
log dicts are printed rounded and never cut inside a number."""

import io
import logging
import re
import sys
import threading

import pytest
from tqdm import tqdm

from trackmux import Tracker, Trainer, TrainingArguments
from trackmux._console import BarConsole
from trackmux.testing.toy import RegressionDataset, TinyRegressor
from trackmux.trainer_callback import _format_logs, _log_lines


class Terminal(io.StringIO):
    """stdout and stderr of a terminal: both land in one place, as on a screen."""

    def isatty(self):
        return True


def assert_never_glued(output: str, messages: list[str]) -> None:
    """Each message starts a line of its own (after a newline, or after the carriage return
    that cleared the bar) and ends it."""
    for message in messages:
        found = [match.start() for match in re.finditer(re.escape(message), output)]
        assert found, f"{message!r} was not written: {output!r}"
        for start in found:
            before = output[start - 1] if start else "\n"
            after = output[start + len(message)]
            assert before in "\r\n" and after == "\n", (message, output[max(0, start - 80) :])


@pytest.fixture
def terminal(monkeypatch):
    screen = Terminal()

    def use():  # in the test body: pytest's own capture replaces the streams before it
        monkeypatch.setattr(sys, "stdout", screen)
        monkeypatch.setattr(sys, "stderr", screen)
        return screen

    return use


def test_prints_logging_and_other_threads_go_above_the_bar(terminal):
    terminal = terminal()
    backend = logging.getLogger("test_console.backend")
    handler = logging.StreamHandler()  # bound to sys.stderr, as a backend's own handler is
    backend.addHandler(handler)
    backend.propagate = False
    bar = tqdm(total=10, file=sys.stderr, mininterval=0)
    console = BarConsole(bar).start()
    try:
        bar.update(3)
        print("a print from the loop")
        backend.warning("codecarbon: a backend's warning")
        thread = threading.Thread(target=lambda: print("from a worker", "thread"))
        thread.start()
        thread.join()
        sys.stderr.write("a partial ")
        bar.update(3)
        sys.stderr.write("line\n")
        console.write("{'loss': 1.5}")
    finally:
        console.stop()
        bar.close()
        backend.removeHandler(handler)
    assert sys.stdout is terminal and sys.stderr is terminal and handler.stream is terminal
    output = terminal.getvalue()
    assert_never_glued(
        output,
        [
            "a print from the loop",
            "codecarbon: a backend's warning",
            "from a worker thread",
            "a partial line",
            "{'loss': 1.5}",
        ],
    )


class FixedStreamHandler(logging.StreamHandler):
    """Like some libraries' handlers: the stream is a property without a setter."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        if value is not None and value is not sys.stderr:
            raise AttributeError("property 'stream' has no setter")


def test_a_handler_whose_stream_cannot_be_set_is_left_alone(terminal):
    terminal = terminal()
    handler = FixedStreamHandler()
    backend = logging.getLogger("test_console.fixed")
    backend.addHandler(handler)
    try:
        bar = tqdm(total=2, file=sys.stderr)
        console = BarConsole(bar).start()
        backend.warning("through sys.stderr, above the bar")
        console.stop()
        bar.close()
    finally:
        backend.removeHandler(handler)
    assert_never_glued(terminal.getvalue(), ["through sys.stderr, above the bar"])


def test_a_handler_made_while_the_bar_is_shown_writes_straight_through_after(terminal):
    terminal = terminal()
    bar = tqdm(total=2, file=sys.stderr)
    console = BarConsole(bar).start()
    late = logging.StreamHandler()  # created during the bar: it holds the routing stream
    console.stop()
    bar.close()
    late.emit(logging.LogRecord("x", logging.WARNING, __file__, 1, "after the bar", None, None))
    assert terminal.getvalue().endswith("after the bar\n")


class Chatty(Tracker):
    """A tracker whose backend talks from its worker thread while the bar is shown."""

    name = "chatty"

    def start(self, run):
        logging.getLogger("trackmux.chatty").warning("chatty: started offline")
        return None

    def log_metrics(self, metrics, step, epoch=None):
        print(f"chatty backend: step {step}")

    def finish(self, status):
        pass


def test_a_training_with_the_bar_and_a_chatty_tracker_glues_no_line(terminal, tmp_path):
    terminal = terminal()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=6,
        logging_steps=2,
        eval_strategy="steps",
        eval_steps=3,
        save_strategy="no",
        report_to="none",
    )
    trainer = Trainer(
        TinyRegressor(),
        args,
        train_dataset=RegressionDataset(32),
        eval_dataset=RegressionDataset(8, seed=1),
        trackers=[Chatty()],
    )
    trainer.train()
    output = terminal.getvalue()
    # every log dict is rounded: no float printed with more than 4 significant digits
    logged = re.findall(r"\{'(?:loss|eval_loss)'[^\n]*", output)
    assert logged
    for line in logged:
        for number in re.findall(r"\d+\.\d+(?:e-?\d+)?", line):
            digits = number.split("e")[0].replace(".", "").strip("0")
            assert len(digits) <= 4, (number, line)
    chatter = sorted(set(re.findall(r"chatty backend: step \d+", output)))
    assert chatter
    assert_never_glued(output, chatter)
    assert sys.stdout is terminal and sys.stderr is terminal


def test_log_dicts_are_rounded_not_cut():
    shown = _format_logs(
        {
            "loss": 26.687690449948132,
            "grad_norm": 14.212742805480957,
            "learning_rate": 0.0005995024875621891,
            "epoch": 0.123456,
            "total_flos": 1.0,
            "step_name": "warm",
        }
    )
    assert shown == {
        "loss": 26.69,
        "grad_norm": 14.21,
        "learning_rate": 0.0005995,
        "epoch": 0.12,
        "step_name": "warm",
    }
    long = {f"metric_with_a_long_name_{index}": 1234.5678 + index for index in range(8)}
    lines = _log_lines(_format_logs(long), width=60)
    assert len(lines) > 1 and all(len(line) <= 60 for line in lines)
    assert "".join(lines).replace(",", ", ").replace(",  ", ", ") == str(_format_logs(long))
