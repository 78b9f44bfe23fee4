"""Issue 8, scenario 9: checkpoints are loaded without running pickled code; secrets are
redacted from the config every tracker gets and from the jsonl log, credential environment
variables included; TRACKMUX_DISABLE_PLUGIN_AUTOLOAD keeps third-party code from loading;
the CLI never prints a credential."""

from __future__ import annotations

import json
import os
import pickle
import sys
import textwrap

import pytest
from reliability_helpers import Recorder, make_trainer

from trackmux.runlog import find_runs, read_run
from trackmux.testing import describe_child, run_child

SECRET = "s3cr3t-token-5f1c9e"  # what a credential variable holds in these tests


class Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("victim", ["optimizer.pt", "scheduler.pt", "rng_state_0.pth"])
def test_a_checkpoint_with_pickled_code_is_refused_without_running_it(tmp_path, victim):
    make_trainer(tmp_path, save_strategy="steps", save_steps=3).train()
    checkpoint = tmp_path / "checkpoint-3"
    marker = tmp_path / "pwned"
    (checkpoint / victim).write_bytes(pickle.dumps({"state": Payload(marker)}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        make_trainer(tmp_path).train(resume_from_checkpoint=str(checkpoint))
    assert not marker.exists()


def test_weights_are_safetensors(tmp_path):
    make_trainer(tmp_path, save_strategy="steps", save_steps=3).train()
    header = (tmp_path / "checkpoint-3" / "model.safetensors").read_bytes()[:8]
    assert int.from_bytes(header, "little") > 0  # safetensors: a length, then a JSON header
    assert not list((tmp_path / "checkpoint-3").glob("*.bin"))


@pytest.mark.parametrize(
    "variable",
    ["WANDB_API_KEY", "COMET_API_KEY", "NEPTUNE_API_TOKEN", "MLFLOW_TRACKING_PASSWORD",
     "DAGSHUB_USER_TOKEN", "CLEARML_API_SECRET_KEY", "MY_SERVICE_TOKEN"],
)  # fmt: skip
def test_credentials_are_redacted_from_config_and_log(tmp_path, monkeypatch, variable):
    monkeypatch.setenv(variable, SECRET)
    recorder = Recorder()
    trainer = make_trainer(tmp_path, [recorder])
    trainer.hyperparameters = {
        "copied_key": SECRET,  # a credential under an innocent name
        "endpoint": f"https://host/api?key={SECRET}&page=2",
        "tracking_uri": "https://bob:hunter22@mlflow.example/",
        "hub_token": "hf_abcdefghijk",
        "nested": {"service": {"password": "pw-123456"}},
        "max_tokens": 512,
        "pad_token": "<pad>",
    }
    trainer.train()

    for config in (recorder.runs[0].config, read_run(find_runs(tmp_path)[-1]).config):
        assert config["copied_key"] == "***"
        assert config["endpoint"] == "https://host/api?key=***&page=2"
        assert config["tracking_uri"] == "https://bob:***@mlflow.example/"
        assert config["hub_token"] == "***"
        assert config["nested/service/password"] == "***"
        assert config["max_tokens"] == 512 and config["pad_token"] == "<pad>"  # not secrets
    text = (tmp_path / "runs" / "reliability" / "events.jsonl").read_text()
    for leaked in (SECRET, "hunter22", "hf_abcdefghijk", "pw-123456"):
        assert leaked not in text


PLUGIN = """
    import os
    from trackmux import Tracker, hookimpl

    open(os.environ["IMPORT_MARKER"], "w").close()  # a side effect of importing this plugin

    class Leaky(Tracker):
        name = "leaky"

        @classmethod
        def mode(cls):
            return "online (https://alice:" + os.environ["WANDB_API_KEY"] + "@example.com)"

        def start(self, run): return None
        def log_metrics(self, metrics, step, epoch=None): pass
        def finish(self, status): pass

    @hookimpl
    def register_trackers(register):
        register(Leaky)
"""

BROKEN = """
    import os
    raise ImportError("cannot reach https://bob:" + os.environ["WANDB_API_KEY"] + "@host/simple")
"""


@pytest.fixture
def third_party(tmp_path):
    """Two installed-looking third-party plugins: one that leaks a credential in its mode,
    one whose import fails with a credential in the message."""
    root = tmp_path / "site"
    for name, source in (("leaky", PLUGIN), ("broken", BROKEN)):
        dist_info = root / f"trackmux_{name}-1.0.dist-info"
        dist_info.mkdir(parents=True)
        (dist_info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: trackmux-{name}\nVersion: 1.0\n"
        )
        (dist_info / "entry_points.txt").write_text(f"[trackmux]\n{name} = tm_{name}\n")
        (root / f"tm_{name}.py").write_text(textwrap.dedent(source))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TRACKMUX_DISABLE_PLUGIN_AUTOLOAD", "TRACKMUX_PLUGINS")
    }
    env.update(PYTHONPATH=str(root), WANDB_API_KEY=SECRET, IMPORT_MARKER=str(tmp_path / "imported"))
    return env, tmp_path / "imported"


def cli(env, *arguments):
    return run_child(
        [sys.executable, "-m", "trackmux", *arguments], env=env, timeout=60, check=False
    )


def test_the_cli_never_prints_a_credential(third_party, tmp_path, monkeypatch):
    env, _ = third_party
    table, listing = cli(env, "plugins"), cli(env, "plugins", "--json")
    assert table.returncode == 0 and listing.returncode == 0, (
        describe_child(table) + "\n" + describe_child(listing)
    )
    rows = {row["name"]: row for row in json.loads(listing.stdout)["plugins"]}
    assert rows["leaky"]["mode"] == "online (https://alice:***@example.com)"
    assert rows["broken"]["status"] == "broken"
    assert "https://bob:***@host/simple" in rows["broken"]["reason"]
    assert "leaky" in table.stdout and "broken" in table.stdout, describe_child(table)
    for output in (table, listing):
        assert SECRET not in output.stdout + output.stderr, describe_child(output)

    # show: a run trained with the credential in its config
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    trainer = make_trainer(tmp_path / "out")
    trainer.hyperparameters = {"learning_rate_note": SECRET}
    trainer.train()
    for arguments in (["show"], ["show", "--json"]):
        shown = cli(env, *arguments, str(tmp_path / "out"))
        assert shown.returncode == 0, describe_child(shown)
        assert SECRET not in shown.stdout + shown.stderr, describe_child(shown)


def test_disabling_autoload_keeps_third_party_code_from_loading(third_party):
    env, imported = third_party
    listing = cli({**env, "TRACKMUX_DISABLE_PLUGIN_AUTOLOAD": "1"}, "plugins", "--json")
    assert listing.returncode == 0, describe_child(listing)
    assert [row["name"] for row in json.loads(listing.stdout)["plugins"]] == ["jsonl"]
    assert not imported.exists()  # the plugin module was never imported
    autoloaded = cli(env, "plugins", "--json")
    assert autoloaded.returncode == 0, describe_child(autoloaded)
    assert imported.exists()  # (and without the variable it is)
