"""Writing and reading ``checkpoint-<step>`` directories, in Hugging Face transformers'
layout, so a checkpoint crosses over both ways: transformers' Trainer resumes one written
here, and this Trainer resumes one transformers wrote.

What is in one: ``model.safetensors`` (+ ``config.json``), ``optimizer.pt``,
``scheduler.pt``, ``scaler.pt`` (fp16 only), ``rng_state.pth`` (``rng_state_<rank>.pth``
under torchrun), ``trainer_state.json`` with exactly transformers' ``TrainerState`` keys,
and ``trackmux_state.json`` with trackmux's own (the run name and the trackers' run
identities), which transformers leaves alone. ``training_args.bin`` is never written nor
read: it is a pickle, and unpickling runs code.

Only tensors and plain data are unpickled (``torch.load(weights_only=True)``, with numpy's
array types allowed for the RNG state transformers saves), never arbitrary objects.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil

import torch

from .trainer_state import (
    STATE_FILE_NAME,
    TRACKMUX_STATE_FILE_NAME,
    ExportableState,
    TrainerState,
    _dumps,
    _write_atomically,
)
from .trainer_utils import (
    PREFIX_CHECKPOINT_DIR,
    TEMPORARY_SUFFIX,
    damaged_state_file,
    sorted_checkpoints,
)

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"
SCALER_NAME = "scaler.pt"
CONFIG_NAME = "config.json"
#: trackmux's keys of the trainer state, kept out of trainer_state.json (transformers'
#: ``TrainerState.load_from_json`` refuses a key it does not know)
TRACKMUX_STATE_KEYS = ("run_name", "tracker_runs", "tracker_runs_pending")
#: transformers' ``TrainerState`` fields, in its order: what trainer_state.json holds
HF_STATE_KEYS = (
    "epoch",
    "global_step",
    "max_steps",
    "logging_steps",
    "eval_steps",
    "save_steps",
    "train_batch_size",
    "num_train_epochs",
    "num_input_tokens_seen",
    "total_flos",
    "log_history",
    "best_metric",
    "best_global_step",
    "best_model_checkpoint",
    "is_local_process_zero",
    "is_world_process_zero",
    "is_hyper_param_search",
    "trial_name",
    "trial_params",
    "stateful_callbacks",
)


def rng_file_name(rank: int, world_size: int) -> str:
    """transformers' name: one file without a rank for a single process."""
    return "rng_state.pth" if world_size <= 1 else f"rng_state_{rank}.pth"


# ----------------------------------------------------------------------------- state


def save_state(state: TrainerState, directory: str) -> None:
    """trainer_state.json in transformers' schema, trackmux's keys beside it. The trackmux
    file goes first: trainer_state.json, written last, marks a complete checkpoint."""
    values = {
        "num_input_tokens_seen": 0,  # a field transformers has, should the state lack it
        **{f: getattr(state, f) for f in vars(state) if not f.startswith("_")},
    }
    trackmux = {key: values.pop(key) for key in TRACKMUX_STATE_KEYS}
    _write_atomically(os.path.join(directory, TRACKMUX_STATE_FILE_NAME), _dumps(trackmux))
    hf = {key: values[key] for key in HF_STATE_KEYS}
    _write_atomically(os.path.join(directory, STATE_FILE_NAME), _dumps(_plain(hf)))


def _plain(data: dict) -> dict:
    """Round-trip through JSON so a tensor left in a log is written as a number."""
    return json.loads(_dumps(data))


def load_state(directory: str) -> TrainerState:
    """The state of a checkpoint written by transformers, by trackmux, or by an older trackmux
    (its keys inside trainer_state.json); a key this version does not know is ignored."""
    state = TrainerState.load_from_json(os.path.join(directory, STATE_FILE_NAME))
    path = os.path.join(directory, TRACKMUX_STATE_FILE_NAME)
    if not os.path.isfile(path):
        return state
    try:
        with open(path, encoding="utf-8") as handle:
            saved = json.load(handle)
    except (OSError, ValueError) as error:
        logger.warning(
            "%s cannot be read (%s): the trackers open new runs instead of continuing theirs",
            path,
            error,
        )
        return state
    if isinstance(saved, dict):
        for key in TRACKMUX_STATE_KEYS:
            if key in saved:
                setattr(state, key, saved[key])
    return state


def check_state_file(directory: str) -> str:
    """The path of ``directory``'s trainer_state.json; ValueError naming the problem when it
    is missing or damaged."""
    state_file = os.path.join(directory, STATE_FILE_NAME)
    if not os.path.isfile(state_file):
        raise ValueError(
            f"resume_from_checkpoint={directory!r} is not a trackmux checkpoint (no "
            f"{STATE_FILE_NAME}); pass a checkpoint-<step> directory or True"
        )
    problem = damaged_state_file(state_file)
    if problem is not None:
        raise ValueError(
            f"resume_from_checkpoint={directory!r}: its {STATE_FILE_NAME} {problem}; pass "
            "an older checkpoint, or True for the newest intact one"
        )
    return state_file


# ------------------------------------------------------------------------------- RNG


def capture_rng_state(distributed: bool = False) -> dict:
    """Every generator training uses, as transformers saves it (``python``, ``numpy``,
    ``cpu``, ``cuda``)."""
    state: dict = {"python": random.getstate(), "cpu": torch.random.get_rng_state()}
    with contextlib.suppress(ImportError):
        import numpy as np

        state["numpy"] = np.random.get_state()
    if torch.cuda.is_available():
        cuda = torch.cuda.random
        state["cuda"] = cuda.get_rng_state_all() if distributed else cuda.get_rng_state()
    return state


def restore_rng_state(state: dict, distributed: bool = False) -> None:
    """Restore what :func:`capture_rng_state` saved; also reads the layout trackmux wrote
    before (``torch``, and numpy's key array as a tensor)."""
    random.setstate(_as_tuple(state["python"]))
    torch.random.set_rng_state(state["cpu"] if "cpu" in state else state["torch"])
    if "numpy" in state:
        import numpy as np

        kind, keys, *rest = state["numpy"]
        if isinstance(keys, torch.Tensor):
            keys = keys.numpy().astype("uint32")
        np.random.set_state((kind, keys, *rest))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, list | tuple):
            torch.cuda.random.set_rng_state_all(cuda)
        else:
            torch.cuda.random.set_rng_state(cuda)


def _as_tuple(value):
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(item) for item in value)
    return value


def _numpy_safe_globals():
    """numpy's array and dtype types, which transformers' RNG files hold: reconstructing
    them runs no code of the file's choosing."""
    try:
        import numpy as np
    except ImportError:
        return contextlib.nullcontext()
    core = getattr(np, "_core", None) or np.core
    allowed = [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    return torch.serialization.safe_globals(allowed)


def load_tensors(path: str, map_location=None):
    """``torch.load`` that unpickles tensors and plain data only."""
    with _numpy_safe_globals():
        return torch.load(path, map_location=map_location, weights_only=True)


def find_rng_file(directory: str, rank: int, world_size: int) -> str | None:
    """This process's RNG file: transformers' name first, trackmux's older one after."""
    for name in (rng_file_name(rank, world_size), f"rng_state_{rank}.pth"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


# ------------------------------------------------------------------------- optimizer


def fit_optimizer_state(saved: dict, optimizer, model) -> dict:
    """``saved`` (an optimizer state dict) laid out as ``optimizer``'s parameter groups.

    A checkpoint of an older trackmux grouped the parameters differently (one group when
    there was no weight decay, or by tensor rank); its per-parameter state is moved to the
    same parameters here, the groups keep this optimizer's weight decay and take the saved
    learning rates. A layout that matches is returned as it is."""
    current = optimizer.state_dict()
    sizes = [len(group["params"]) for group in saved["param_groups"]]
    if sizes == [len(group["params"]) for group in current["param_groups"]]:
        return saved
    index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    trainable = [p for p in model.parameters() if p.requires_grad]
    layouts = (
        [trainable],
        [[p for p in trainable if p.ndim >= 2], [p for p in trainable if p.ndim < 2]],
    )
    for layout in layouts:
        groups = [group for group in layout if group]
        if [len(group) for group in groups] != sizes:
            continue
        order = [p for group in groups for p in group]
        state = {}
        for saved_index, parameter in enumerate(order):
            if saved_index in saved["state"] and id(parameter) in index:
                state[index[id(parameter)]] = saved["state"][saved_index]
        first = saved["param_groups"][0]
        param_groups = [
            {**group, **{k: first[k] for k in ("lr", "initial_lr") if k in first}}
            for group in current["param_groups"]
        ]
        return {"state": state, "param_groups": param_groups}
    raise ValueError(
        f"the checkpoint's optimizer has parameter groups of {sizes} parameters and this "
        f"Trainer's of {[len(g['params']) for g in current['param_groups']]}: it was saved "
        "for another model or optimizer; resume with the same model and optimizer settings"
    )


def fit_scheduler_state(saved: dict, optimizer) -> dict:
    """A LambdaLR-style state saved for another number of parameter groups: one learning
    rate per group of this optimizer (the default optimizer's groups share it)."""
    groups = len(optimizer.param_groups)
    fitted = dict(saved)
    for key in ("base_lrs", "_last_lr", "lr_lambdas"):
        values = saved.get(key)
        if isinstance(values, list) and values and len(values) != groups:
            fitted[key] = [values[0]] * groups
    return fitted


# ------------------------------------------------------------------- callback state


def callback_states(callbacks, control) -> dict:
    """The states of the stateful callbacks and of ``control``, keyed by class name (a list
    for several instances of one class), as transformers saves them."""
    stateful: dict = {}
    for callback in [*callbacks, control]:
        if isinstance(callback, ExportableState):
            stateful.setdefault(type(callback).__name__, []).append(callback.state())
    return {name: states[0] if len(states) == 1 else states for name, states in stateful.items()}


def restore_callback_states(callbacks, control, stateful: dict) -> None:
    """Give the live callbacks (and ``control``) their saved attributes back, matched by
    class name, in order when several instances of a class were saved."""
    seen: dict[str, int] = {}
    for callback in [*callbacks, control]:
        if not isinstance(callback, ExportableState):
            continue
        name = type(callback).__name__
        saved = stateful.get(name)
        if isinstance(saved, list):
            index = seen.get(name, 0)
            seen[name] = index + 1
            saved = saved[index] if index < len(saved) else None
        if not isinstance(saved, dict):
            continue
        if callback is control:
            for flag, value in saved.get("args", {}).items():
                if hasattr(control, flag):
                    setattr(control, flag, value)
        for attribute, value in saved.get("attributes", {}).items():
            setattr(callback, attribute, value)


# ----------------------------------------------------------------- directories


def checkpoint_directory(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")


def remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def publish(staging: str, directory: str) -> None:
    """Rename the complete ``staging`` directory to ``directory``; one already there (the
    same step saved again) is moved aside first and removed after."""
    if not os.path.lexists(directory):
        os.rename(staging, directory)
        return
    old = f"{directory}{TEMPORARY_SUFFIX}-old"
    remove(old)
    os.rename(directory, old)
    os.rename(staging, directory)
    remove(old)


def rotate(output_dir: str, limit: int | None, best: str | None) -> None:
    """Keep the ``limit`` newest checkpoints, and the best one besides."""
    if not limit:
        return
    checkpoints = sorted_checkpoints(output_dir)
    most_recent = checkpoints[-1] if checkpoints else None
    if best in checkpoints:  # the best one is kept: move it to the kept end
        checkpoints.remove(best)
        checkpoints.append(best)
        if limit == 1 and best != most_recent:  # keep the best and the one to resume from
            limit = 2
    for directory in checkpoints[: max(0, len(checkpoints) - limit)]:
        logger.info("Deleting older checkpoint %s (save_total_limit=%s)", directory, limit)
        shutil.rmtree(directory, ignore_errors=True)
