"""Start-up costs, each measured in fresh interpreters (what a user's script pays once):

- ``import trackmux``: wall time of ``python -c "import trackmux"`` minus that of
  ``python -c "pass"`` (medians, the two interleaved), and the ``-X importtime`` total;
- plugin discovery: ``trackmux.plugins.get_registry()`` timed inside a fresh process, after
  ``import trackmux``;
- ``trackmux plugins``: the whole command (``python -m trackmux plugins``, what the console
  script runs), wall time of a fresh process, with every plugin of this environment found;
- Trainer construction beyond ``import torch``: in a fresh process, torch is imported first,
  then ``import trackmux`` + ``Trainer(TinyRegressor(), TrainingArguments(report_to="none"))``
  is timed.

Run alone with ``python benchmarks/startup.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

DISCOVERY = """
import json, time
t0 = time.perf_counter()
import trackmux
t1 = time.perf_counter()
from trackmux.plugins import get_registry
t2 = time.perf_counter()
registry = get_registry()
t3 = time.perf_counter()
print(json.dumps({
    "import_trackmux_s": t1 - t0,
    "import_plugins_module_s": t2 - t1,
    "get_registry_s": t3 - t2,
    "plugins": {name: info.status for name, info in registry.plugins.items()},
}))
"""

CONSTRUCTION = """
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import trackmux
from trackmux import Trainer, TrainingArguments
from trackmux.testing.toy import TinyRegressor
t2 = time.perf_counter()
model = TinyRegressor()
args = TrainingArguments(report_to="none", output_dir=sys.argv[1])
t3 = time.perf_counter()
Trainer(model, args)
t4 = time.perf_counter()
print(json.dumps({
    "import_torch_s": t1 - t0,
    "import_trainer_s": t2 - t1,
    "arguments_s": t3 - t2,
    "trainer_init_s": t4 - t3,
    "construction_s": t4 - t1,
}))
"""


def _environment() -> dict:
    env = dict(os.environ)
    # a debug or trace setting of the caller would be timed too
    env.pop("TRACKMUX_TRACE_HOOKS", None)
    env.setdefault("TRACKMUX_VERBOSITY", "warning")
    return env


def _wall(arguments: list[str], env: dict, cwd: str) -> float:
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, *arguments],
        env=env,
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - began


def _json_run(code: str, env: dict, cwd: str, *extra: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code, *extra],
        env=env,
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_importtime(stderr: str) -> dict:
    """Totals of ``-X importtime`` output: the sum of every module's own time, the
    cumulative time of the top-level ``trackmux`` import, and the slowest modules."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        own, cumulative, name = line[len("import time:") :].split("|", 2)
        # one space after the bar, then two more per nesting level
        rows.append((int(own), int(cumulative), name.rstrip()[1:]))
    top_level = [c for _, c, name in rows if name == "trackmux"]
    slowest = sorted(rows, reverse=True)[:8]
    return {
        "total_self_us": sum(own for own, _, _ in rows),
        "trackmux_cumulative_us": top_level[-1] if top_level else None,
        "modules": len(rows),
        "slowest_self_us": [[name.strip(), own] for own, _, name in slowest],
    }


def _median(values: list[float]) -> float:
    return statistics.median(values)


def measure(runs: int = 10) -> dict:
    env = _environment()
    with tempfile.TemporaryDirectory(prefix="trackmux-bench-startup-") as cwd:
        # fill the OS file cache and the .pyc caches before anything is timed
        _wall(["-c", "import trackmux.trainer"], env, cwd)
        _wall(["-m", "trackmux", "plugins"], env, cwd)
        empty, imported, command = [], [], []
        for _ in range(runs):
            empty.append(_wall(["-c", "pass"], env, cwd))
            imported.append(_wall(["-c", "import trackmux"], env, cwd))
            command.append(_wall(["-m", "trackmux", "plugins"], env, cwd))
        importtime = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import trackmux"],
            env=env,
            cwd=cwd,
            check=True,
            capture_output=True,
            text=True,
        )
        discovery = [_json_run(DISCOVERY, env, cwd) for _ in range(runs)]
        construction = [
            _json_run(CONSTRUCTION, env, cwd, os.path.join(cwd, "out")) for _ in range(runs)
        ]

    def medians(samples: list[dict]) -> dict:
        return {
            key: _median([sample[key] for sample in samples])
            for key in samples[0]
            if key.endswith("_s")
        }

    discovery_medians = medians(discovery)
    discovery_medians["discovery_s"] = _median(
        [d["import_plugins_module_s"] + d["get_registry_s"] for d in discovery]
    )
    return {
        "runs": runs,
        "import": {
            "python_pass_s": _median(empty),
            "python_import_trackmux_s": _median(imported),
            "import_trackmux_s": _median(imported) - _median(empty),
            # start-up noise only adds time: the fastest runs differ by the import alone
            "import_trackmux_min_s": min(imported) - min(empty),
            "per_run_pass_s": empty,
            "per_run_import_s": imported,
            "importtime": parse_importtime(importtime.stderr),
        },
        "discovery": {**discovery_medians, "plugins": discovery[-1]["plugins"]},
        "plugins_command": {
            "trackmux_plugins_s": _median(command),
            "trackmux_plugins_min_s": min(command),
            "per_run_s": command,
            "plugins_found": len(discovery[-1]["plugins"]),
            "plugins_available": sum(
                status == "available" for status in discovery[-1]["plugins"].values()
            ),
        },
        "construction": medians(construction),
    }


def format_report(result: dict) -> str:
    imp, disc, cons = result["import"], result["discovery"], result["construction"]
    command = result["plugins_command"]
    importtime = imp["importtime"]
    lines = [
        f"start-up (medians of {result['runs']} fresh processes)",
        f"  import trackmux            {imp['import_trackmux_s'] * 1e3:8.1f} ms   "
        f"(fastest runs: {imp['import_trackmux_min_s'] * 1e3:.1f} ms; python -c pass "
        f"{imp['python_pass_s'] * 1e3:.1f} ms; -X importtime: "
        f"trackmux {(importtime['trackmux_cumulative_us'] or 0) / 1e3:.1f} ms, all modules "
        f"{importtime['total_self_us'] / 1e3:.1f} ms)",
        f"  plugin discovery           {disc['discovery_s'] * 1e3:8.1f} ms   "
        f"(import trackmux.plugins {disc['import_plugins_module_s'] * 1e3:.1f} ms + "
        f"get_registry() {disc['get_registry_s'] * 1e3:.1f} ms; plugins: "
        f"{', '.join(f'{k}={v}' for k, v in disc['plugins'].items()) or 'none'})",
        f"  trackmux plugins           {command['trackmux_plugins_s'] * 1e3:8.1f} ms   "
        f"(the whole command, a fresh process; fastest {command['trackmux_plugins_min_s'] * 1e3:.1f}"
        f" ms; {command['plugins_available']} of {command['plugins_found']} plugins available)",
        f"  Trainer beyond import torch{cons['construction_s'] * 1e3:8.1f} ms   "
        f"(import trackmux.Trainer {cons['import_trainer_s'] * 1e3:.1f} ms + "
        f"TrainingArguments {cons['arguments_s'] * 1e3:.1f} ms + Trainer() "
        f"{cons['trainer_init_s'] * 1e3:.1f} ms; import torch {cons['import_torch_s']:.2f} s)",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="fresh processes per figure")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    options = parser.parse_args(argv)
    result = measure(options.runs)
    print(json.dumps(result, indent=2) if options.json else format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
