"""``trackmux show`` and ``trackmux plot`` on run logs written by a real Trainer, and the
examples of docs/show-and-plot.md, run as written."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import struct
import sys
import textwrap
from pathlib import Path

import pytest

from trackmux.cli import NOT_FINISHED, goal, main
from trackmux.plot import panels, select
from trackmux.runlog import read_run
from trackmux.testing import StopAt, describe_child, run_child, run_training

DOCS = Path(__file__).resolve().parent.parent / "docs"
RUN = "out/runs/conformance"
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_matplotlib = pytest.mark.skipif(
    not HAS_MATPLOTLIB, reason="matplotlib is not installed (pip install 'trackmux[plot]')"
)


def show_json(capsys, run_dir=RUN) -> dict:
    capsys.readouterr()
    assert main(["show", str(run_dir), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def png_size(path) -> tuple[int, int]:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


# -- show -------------------------------------------------------------------------------------


def test_show_prints_status_sessions_config_and_metrics(trackmux_env, capsys):
    trainer = run_training("out")
    trainer.evaluate()
    capsys.readouterr()
    assert main(["show", RUN]) == 0
    out = capsys.readouterr().out
    log = read_run(RUN)
    lines = out.splitlines()
    assert lines[0] == f"run conformance  ({trackmux_env / RUN})"
    assert lines[1] == "status: success"
    assert lines[2].startswith("duration: ") and lines[2].endswith(" in 2 session(s)")
    assert lines[3].startswith("  1. train (new, last step 8): ")
    assert lines[3].endswith(", success")
    assert lines[4].startswith("  2. evaluate (at step 8, last step 8): 4 point(s), ")
    assert f"config: {len(log.config)} field(s), not at their defaults: " in out
    # the user's hyperparameters first, then changed TrainingArguments; defaults left out
    assert "dataset=toy-regression, note=conformance, max_steps=8, learning_rate=0.01" in out
    assert "weight_decay" not in out and "output_dir" not in out
    losses = log.history("train/loss")
    best_step, best = min(losses, key=lambda point: point[1])
    assert (
        f"  train/loss: last {losses[-1][1]:.6g} at step 8, best {best:.6g} (min) at step "
        f"{best_step}, 4 point(s)"
    ) in lines
    # no "best" for a runtime
    assert any(line.startswith("  eval/runtime: last ") and "best" not in line for line in lines)
    assert f"train/train_loss={log.summary['train/train_loss']:.6g}" in out


def test_show_json_has_everything(trackmux_env, capsys):
    run_training("out")
    info = show_json(capsys)
    log = read_run(RUN)
    assert info["run"] == "conformance" and info["status"] == "success" and info["finished"]
    assert info["config"] == log.config and info["config_fields"] == len(log.config)
    assert info["config_shown"]["learning_rate"] == 0.01 and "seed" in info["config_shown"]
    assert set(info["metrics"]) == set(log.metrics)
    losses = log.history("train/loss")
    loss = info["metrics"]["train/loss"]
    assert (loss["last"], loss["last_step"], loss["points"]) == (losses[-1][1], 8, 4)
    assert (loss["goal"], loss["best"]) == ("min", min(v for _, v in losses))
    assert info["metrics"]["train/learning_rate"]["goal"] is None
    assert "best" not in info["metrics"]["train/learning_rate"]
    assert info["summary"] == log.summary
    [session] = info["sessions"]
    assert session["kind"] == "train" and session["status"] == "success"
    assert info["duration_s"] == pytest.approx(log.ended - log.started)


def test_show_of_a_resumed_run_counts_each_step_once(trackmux_env, capsys):
    with pytest.raises(KeyboardInterrupt):
        run_training("out", callbacks=[StopAt(7, KeyboardInterrupt())])
    run_training("out", resume=True)
    info = show_json(capsys)
    assert [s["status"] for s in info["sessions"]] == ["killed", "success"]
    assert [(s["resumed"], s["step"]) for s in info["sessions"]] == [(False, 0), (True, 4)]
    assert info["metrics"]["train/loss"]["points"] == 4  # steps 2, 4, 6, 8
    assert info["status"] == "success"
    assert main(["show", RUN]) == 0
    assert "  2. train (resumed at step 4, last step 8): " in capsys.readouterr().out


def test_show_of_a_killed_process_says_it_did_not_finish(trackmux_env, capsys):
    # SIGKILL-like: the process ends without closing anything
    script = textwrap.dedent(
        """
        import os, sys
        from trackmux import TrainerCallback
        from trackmux.testing import run_training

        class Die(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step + 1 == 5:
                    os._exit(9)

        run_training(sys.argv[1], callbacks=[Die()])
        """
    )
    done = run_child([sys.executable, "-c", script, "out"], check=False)
    assert done.returncode == 9, describe_child(done)
    assert main(["show", RUN]) == 0
    out = capsys.readouterr().out
    assert f"status: {NOT_FINISHED}" in out
    assert NOT_FINISHED == "did not finish (no finish record: crashed or still running)"
    assert "  1. train (new, last step 4): " in out and out.splitlines()[3].endswith(
        "no finish record"
    )
    info = show_json(capsys)
    assert info["status"] is None and info["finished"] is False
    assert info["metrics"]["train/loss"]["last_step"] == 4


def test_show_json_writes_nan_as_a_string(trackmux_env, capsys):
    from trackmux.run import start_run

    with start_run(["jsonl"], output_dir="out", run_name="loop", config={"lr": 0.1}) as run:
        for step, (acc, loss) in enumerate([(0.5, 2.0), (0.9, float("nan")), (0.7, 1.0)]):
            run.log({"eval/acc": acc, "train/loss": loss}, step=step)
    info = show_json(capsys, "out/runs/loop")
    assert (
        info["metrics"]["eval/acc"] | {"goal": "max", "best": 0.9, "best_step": 1}
        == (info["metrics"]["eval/acc"])
    )
    assert info["metrics"]["train/loss"]["best"] == 1.0  # NaN is never best
    assert info["config_shown"] == {"lr": 0.1}
    assert main(["show", "out/runs/loop"]) == 0
    assert "  eval/acc: last 0.7 at step 2, best 0.9 (max) at step 1, 3 point(s)" in (
        capsys.readouterr().out
    )


def test_show_takes_an_output_dir_and_fails_clearly_without_a_run(trackmux_env, capsys):
    assert main(["show", "out", "--json"]) == 1
    assert "trackmux show: no run log in 'out'" in capsys.readouterr().err
    run_training("out")
    run_training("out", run_name="second", max_steps=2)
    assert show_json(capsys, "out")["run"] == "second"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("train/loss", "min"),
        ("eval/val_loss", "min"),
        ("eval/mse", "min"),
        ("test/wer", "min"),
        ("eval/perplexity", "min"),
        ("eval/accuracy", "max"),
        ("eval/acc_top1", "max"),
        ("eval/f1_macro", "max"),
        ("eval/rouge1", "max"),
        ("eval/exact_match", "max"),
        ("eval/error_score", "min"),
        ("eval/mape", "min"),
        ("eval/mapping_score", "max"),
        ("train/learning_rate", None),
        ("eval/runtime", None),
        ("train/grad_norm", None),
        ("eval/samples_per_second", None),
        ("lossless/epoch", None),
    ],
)
def test_best_rule(name, expected):
    assert goal(name) == expected


# -- plot -------------------------------------------------------------------------------------


def test_metric_selection_and_panels():
    names = ["train/loss", "eval/loss", "eval/runtime", "eval/steps_per_second", "train/lr"]
    assert select(names) == ["eval/loss", "train/loss", "train/lr"]
    assert select(names, ["eval/*"]) == ["eval/loss", "eval/runtime", "eval/steps_per_second"]
    assert select(names, ["train/lr", "nothing"]) == ["train/lr"]
    assert panels(["eval/loss", "train/loss", "train/lr"]) == {
        "loss": ["eval/loss", "train/loss"],
        "lr": ["train/lr"],
    }


@needs_matplotlib
def test_plot_draws_one_panel_per_quantity(trackmux_env, capsys):
    trainer = run_training("out")
    trainer.evaluate()
    capsys.readouterr()
    assert main(["plot", RUN, "-o", "plots/curves.png"]) == 0
    assert capsys.readouterr().out == (
        "plots/curves.png: 4 metric(s) of run conformance: "
        "eval/loss, train/grad_norm, train/learning_rate, train/loss\n"
    )
    # 3 panels (loss, grad_norm, learning_rate) side by side at 100 dpi
    assert png_size("plots/curves.png") == (1260, 340)
    assert main(["plot", RUN, "-o", "one.png", "--metrics", "train/loss"]) == 0
    assert png_size("one.png") == (420, 340)
    assert main(["plot", RUN, "-o", "curves.svg", "--metrics", "*"]) == 0
    assert Path("curves.svg").read_text().lstrip().startswith("<?xml")
    assert "7 metric(s)" in capsys.readouterr().out


@needs_matplotlib
def test_plot_of_a_metric_the_run_lacks_fails(trackmux_env, capsys):
    run_training("out")
    assert main(["plot", RUN, "--metrics", "eval/accuracy"]) == 1
    err = capsys.readouterr().err
    assert "no metric matching eval/accuracy" in err and "train/loss" in err
    assert not Path("curves.png").exists() and not Path(RUN, "curves.png").exists()


@needs_matplotlib
def test_plot_without_o_writes_into_the_run_directory(trackmux_env, capsys):
    run_training("out")
    capsys.readouterr()
    assert main(["plot", "out"]) == 0  # an output_dir: its newest run
    image = Path(RUN, "curves.png")
    assert capsys.readouterr().out.startswith(f"{image}: 4 metric(s) of run conformance")
    assert png_size(image) == (1260, 340)
    assert not Path("curves.png").exists()


def test_plot_without_matplotlib_names_the_extra(trackmux_env, capsys, monkeypatch):
    run_training("out")
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails, installed or not
    assert main(["plot", RUN, "-o", "curves.png"]) == 1
    assert capsys.readouterr().err == (
        "trackmux plot: plotting needs matplotlib, which is not installed: "
        "pip install 'trackmux[plot]'\n"
    )
    assert main(["plot", "nothing"]) == 1
    assert "no run log" in capsys.readouterr().err


def test_pyproject_plot_extra_lists_matplotlib():
    import tomllib

    pyproject = tomllib.loads((DOCS.parent / "pyproject.toml").read_text())
    extra = pyproject["project"]["optional-dependencies"]["plot"]
    assert any(requirement.startswith("matplotlib") for requirement in extra)


# -- the docs page, run as written --------------------------------------------------------------

RUNNABLE = re.compile(r"<!-- runnable -->\n```(python|console)\n(.*?)^```$", re.S | re.M)
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def runnable_blocks(page: str) -> list[tuple[str, str]]:
    return RUNNABLE.findall((DOCS / page).read_text(encoding="utf-8"))


def console_commands(block: str) -> list[tuple[str, list[str]]]:
    """``$ command`` lines, each with the output lines the page shows under it."""
    commands: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands:
            commands[-1][1].append(line)
    return commands


def same_shape(text: str, cwd: Path) -> str:
    """The line with its numbers (timings, losses) masked and the working directory shown as
    the page's /path/to."""
    return NUMBER.sub("N", text.replace(str(cwd), "/path/to"))


def run_page(page: str, cwd: Path, capsys, skip_command=lambda command: False) -> int:
    """Run a page's runnable blocks in order: Python in one namespace, console commands
    through trackmux's ``main``; each command's output must be the page's, numbers aside."""
    commands = 0
    namespace: dict = {"__name__": page}
    for number, (language, block) in enumerate(runnable_blocks(page), 1):
        if language == "python":
            exec(compile(block, f"docs/{page} (block {number})", "exec"), namespace)  # noqa: S102
            continue
        for command, shown in console_commands(block):
            if skip_command(command):
                continue
            argv = shlex.split(command)
            assert argv[0] == "trackmux", command
            capsys.readouterr()
            assert main(argv[1:]) == 0, command
            out = capsys.readouterr().out.splitlines()
            if shown:
                expected = [same_shape(line, cwd) for line in shown]
                assert [same_shape(line, cwd) for line in out] == expected, command
            commands += 1
    return commands


def test_show_and_plot_page_runs_as_written(trackmux_env, capsys):
    def needs_missing_matplotlib(command):
        return command.startswith("trackmux plot") and not HAS_MATPLOTLIB

    ran = run_page("show-and-plot.md", trackmux_env, capsys, needs_missing_matplotlib)
    assert ran == (4 if HAS_MATPLOTLIB else 2)
    assert json.loads(Path("out/runs/toy/events.jsonl").read_text().splitlines()[0])["run"] == (
        "toy"
    )
    if HAS_MATPLOTLIB:
        assert png_size("curves.png")[0] > 0 and Path("loss.svg").is_file()
