"""trackmux.testing.processes: a child process that fails, hangs or is interrupted fails the
test with what it printed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trackmux.testing import describe_child, rest_of_output, run_child

FAILS = "import sys; print('some output'); print('MARKER-7f3a', file=sys.stderr); sys.exit(3)"
HANGS = "import sys, time; print('HANG-MARKER', file=sys.stderr, flush=True); time.sleep(60)"


def test_a_failing_child_fails_with_its_stderr_and_exit_status():
    with pytest.raises(AssertionError) as failed:
        run_child([sys.executable, "-c", FAILS])
    message = str(failed.value)
    assert "exit status 3" in message
    assert "MARKER-7f3a" in message and "some output" in message
    assert sys.executable in message  # the command


def test_without_check_the_result_comes_back_and_describe_child_tells_it():
    result = run_child([sys.executable, "-c", FAILS], check=False)
    assert result.returncode == 3
    assert result.stdout == "some output\n" and result.stderr == "MARKER-7f3a\n"
    message = describe_child(result)
    assert "exit status 3" in message and "MARKER-7f3a" in message


def test_a_succeeding_child_returns_its_text_output():
    result = run_child([sys.executable, "-c", "print('fine')"])
    assert result.returncode == 0 and result.stdout == "fine\n"


def test_a_hanging_child_is_killed_and_reported():
    with pytest.raises(AssertionError) as failed:
        run_child([sys.executable, "-c", HANGS], timeout=5)
    message = str(failed.value)
    assert "still running after 5" in message
    assert "HANG-MARKER" in message


def test_only_the_tail_of_a_long_output_is_shown():
    result = run_child([sys.executable, "-c", "print('x' * 50_000 + 'END')"])
    message = describe_child(result, limit=100)
    assert "END" in message and "characters before" in message
    assert len(message) < 1000


def popen(code: str, **options) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=options.pop("stdout", subprocess.PIPE),
        stderr=subprocess.PIPE,
        text=True,
        **options,
    )


def test_rest_of_output_of_a_popen_and_its_description():
    process = popen(FAILS)
    stdout, stderr = rest_of_output(process, timeout=60)
    assert (stdout, stderr) == ("some output\n", "MARKER-7f3a\n")
    message = describe_child(process, stdout, stderr)
    assert "exit status 3" in message and "MARKER-7f3a" in message and "some output" in message


def test_rest_of_output_with_stdout_not_piped():
    process = popen(FAILS, stdout=subprocess.DEVNULL)
    assert rest_of_output(process, timeout=60) == ("", "MARKER-7f3a\n")
    assert process.returncode == 3


def test_rest_of_output_kills_a_hanging_popen_and_reports_it():
    process = popen(HANGS)
    try:
        with pytest.raises(AssertionError) as failed:
            rest_of_output(process, timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    message = str(failed.value)
    assert "still running after 5 s: killed" in message
    assert "HANG-MARKER" in message
    assert process.returncode not in (None, 0)


def test_a_running_popen_is_described_as_running():
    process = popen(HANGS)
    try:
        assert "child process still running" in describe_child(process, "", "")
    finally:
        process.kill()
        process.wait()
