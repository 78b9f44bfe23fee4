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


@pytest.mark.parametrize("victim", ["optimizer.pt", "scheduler.pt", "rng_state.pth"])
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


PASSWORD = "PASSWORD-9b7e4a"  # issue 15, row 3: a password in a tracking URI
CREDENTIALED_URI = f"http://alice:{PASSWORD}@127.0.0.1:5000"


class Credentialed(Recorder):
    """A tracker whose run identity and "where" hold a tracking URI with a password, as
    MLflow's did (issue 15, row 3)."""

    name = "credentialed"

    def start(self, run):
        super().start(run)
        return {"run_id": "r-1", "tracking_uri": CREDENTIALED_URI}

    def where(self):
        return f"{CREDENTIALED_URI}/#/experiments/0/runs/r-1"


def test_a_credentialed_uri_is_redacted_in_checkpoints_sync_state_journal_and_output(
    tmp_path, capsys
):
    from trackmux.sync import STATE_FILE, sync_run

    trainer = make_trainer(tmp_path / "out", [Credentialed()], save_strategy="steps", save_steps=3)
    trainer.hyperparameters = {"tracking_uri": CREDENTIALED_URI}
    trainer.train()
    state = json.loads((tmp_path / "out" / "checkpoint-6" / "trackmux_state.json").read_text())
    saved = state["tracker_runs"]["credentialed"]
    assert saved == {"run_id": "r-1", "tracking_uri": "http://alice:***@127.0.0.1:5000"}
    assert trainer.state.tracker_runs["credentialed"] == saved
    for path in (tmp_path / "out").rglob("*.json*"):
        assert PASSWORD not in path.read_text(errors="replace"), path

    run_dir = find_runs(tmp_path / "out")[-1]
    results = sync_run(run_dir, trackers=[Credentialed()], output_dir=str(tmp_path / "sync"))
    with open(os.path.join(str(run_dir), STATE_FILE), encoding="utf-8") as handle:
        text = handle.read()
    assert PASSWORD not in text and "alice:***@" in text
    assert all(PASSWORD not in result.line() for result in results)
    assert "alice:***@" in results[0].line(), results[0].line()
    captured = capsys.readouterr()
    assert PASSWORD not in captured.out + captured.err


def test_trackmux_log_lines_never_print_a_credential():
    import logging

    from trackmux.values import RedactingFilter

    record = logging.LogRecord(
        "trackmux.run", logging.WARNING, __file__, 1, "run on %s failed", (CREDENTIALED_URI,), None
    )
    assert RedactingFilter().filter(record)
    assert record.getMessage() == "run on http://alice:***@127.0.0.1:5000 failed"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("api_keys/openai", "sk-proj-abc"), ("tokens/github", "x"), ("private_key", "x"),
        ("access_key", "x"), ("secret_key", "x"), ("passphrase", "x"), ("pwd", "x"),
        ("key", "x"), ("credentials", "x"), ("authorization", "x"), ("cookie", "x"),
        ("wandb/key", "x"), ("clientSecret", "x"), ("webhook_url", "x"),
    ],
)  # fmt: skip
def test_every_secret_key_form_is_redacted(name, value):
    from trackmux.values import redact

    assert redact({name: value}) == {name: "***"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Bearer abc.def-123", "Bearer ***"),
        ("host=db user=bob password=pw-123 dbname=x", "host=db user=bob password=*** dbname=x"),
        ("host=db password='a b' port=1", "host=db password=*** port=1"),
        ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AK%2F1&X-Amz-Signature=abc&X-Amz-Expires=9",
         "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=9"),
        ("https://a.blob.core.windows.net/c?sv=1&sig=abc%2B&se=2", "https://a.blob.core.windows.net/c?sv=1&sig=***&se=2"),
        ("https://hooks.slack.com/services/T0/B0/abcdef", "https://hooks.slack.com/services/***"),
        ("https://discord.com/api/webhooks/1/abc", "https://discord.com/api/webhooks/***"),
        ("http://alice:pw@host:5000/x", "http://alice:***@host:5000/x"),
        ("https://ghp_abc@github.com/o/r", "https://***@github.com/o/r"),
        ("a ghp_abcdefghijklmnopqrstuvwxyz b", "a *** b"),
        ("github_pat_11ABCDEFGHIJKLMNOPQRST_xyz", "***"),
        ("xoxb-1234-abcdefghij", "***"), ("xoxp-1234-abcdefghij", "***"),
        ("sk-abcdefghijklmnop1234", "***"), ("hf_abcdefghijklmnopqrst", "***"),
        ("AKIAABCDEFGHIJKLMNOP", "***"), ("glpat-abcdefghijklmnopqrst", "***"),
        # not secrets
        ("sk-learn", "sk-learn"), ("Token counting is on", "Token counting is on"),
        ("https://example.com/a?page=2", "https://example.com/a?page=2"),
    ],
)  # fmt: skip
def test_every_secret_value_pattern_is_redacted(value, expected):
    from trackmux.values import redact

    assert redact({"innocent": value}) == {"innocent": expected}


def test_names_that_are_not_secrets_are_kept():
    from trackmux.values import redact

    params = {"max_tokens": "512", "pad_token": "<pad>", "tokenizer": "bpe", "sort_key": "loss",
              "special_tokens": '["<a>"]', "token_type_ids": "[0]", "model_name": "tiny"}  # fmt: skip
    assert redact(params) == params
