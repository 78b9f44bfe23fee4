"""Distributed training under torchrun: two CPU ranks (gloo) train the toy model with
``tests/dist_scripts/train_ddp.py``; each rank reports what it saw in a JSON file."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from trackmux.runlog import read_run
from trackmux.testing import describe_child, run_child

SCRIPT = Path(__file__).parent / "dist_scripts" / "train_ddp.py"
STEPS = 6  # 48 samples, 2 ranks, batch 4, accumulation 2, 2 epochs
CHECKPOINT_FILES = {
    "model.safetensors",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state_0.pth",
    "trainer_state.json",
}


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("ddp")
    env = {key: value for key, value in os.environ.items() if key not in _TORCHRUN_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"  # two ranks on two cores: no oversubscription
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        str(SCRIPT),
        str(outdir),
    ]
    # a hang bound, not a budget: two ranks took 150 s on a loaded 2-core machine
    result = run_child(command, timeout=600, env=env, check=False)
    assert result.returncode == 0, describe_child(result)
    ranks = [json.loads((outdir / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    return outdir, ranks


_TORCHRUN_VARIABLES = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}


def losses(log_history) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in log_history if "loss" in entry}


def test_both_ranks_trained_the_same_steps(ddp):
    _, ranks = ddp
    assert [r["rank"] for r in ranks] == [0, 1]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["global_step"] for r in ranks] == [STEPS, STEPS]
    assert [sorted(map(int, r["local_losses"])) for r in ranks] == [list(range(1, STEPS + 1))] * 2


def test_only_rank_zero_is_the_world_main_process(ddp):
    _, ranks = ddp
    assert [r["is_world_process_zero"] for r in ranks] == [True, False]
    assert [r["is_local_process_zero"] for r in ranks] == [True, False]


def test_only_rank_zero_writes_checkpoints_and_the_run_log(ddp):
    outdir, _ = ddp
    main, other = outdir / "rank0", outdir / "rank1"
    assert sorted(p.name for p in main.iterdir()) == ["checkpoint-3", "checkpoint-6", "runs"]
    for name in ("checkpoint-3", "checkpoint-6"):
        assert {p.name for p in (main / name).iterdir()} >= CHECKPOINT_FILES
        # a rank writes only its own RNG state, which resuming that rank needs
        assert [p.name for p in (other / name).iterdir()] == ["rng_state_1.pth"]
    assert sorted(p.name for p in other.iterdir()) == ["checkpoint-3", "checkpoint-6"]
    assert [p.name for p in (main / "runs").iterdir()] == ["ddp"]


def test_logged_loss_is_the_mean_of_the_ranks_local_losses(ddp):
    outdir, ranks = ddp
    logged = losses(ranks[0]["log_history"])
    assert sorted(logged) == list(range(1, STEPS + 1))
    local = [{int(step): loss for step, loss in r["local_losses"].items()} for r in ranks]
    for step in logged:
        assert logged[step] == pytest.approx((local[0][step] + local[1][step]) / 2, rel=1e-6)
    assert local[0] != local[1]  # the ranks did train on different samples
    assert losses(ranks[1]["log_history"]) == logged  # every rank logs the reduced value

    run = read_run(outdir / "rank0" / "runs" / "ddp")
    assert run.status == "success"
    assert run.history("train/loss") == sorted(logged.items())
    assert [step for step, _ in run.history("eval/loss")] == [3, 6]


def test_ranks_keep_identical_weights(ddp):
    _, ranks = ddp
    assert ranks[0]["parameters"] == ranks[1]["parameters"]


def test_distributed_sampler_shards_the_data(ddp):
    _, ranks = ddp
    per_epoch = 24
    for epoch in range(2):
        seen = [r["seen"][epoch * per_epoch : (epoch + 1) * per_epoch] for r in ranks]
        assert [len(part) for part in seen] == [per_epoch, per_epoch]
        assert not set(seen[0]) & set(seen[1]), f"epoch {epoch}: a sample went to both ranks"
        assert set(seen[0]) | set(seen[1]) == set(range(48))
    assert ranks[0]["seen"][:per_epoch] != ranks[0]["seen"][per_epoch:]  # reshuffled per epoch


def test_evaluation_sees_every_sample_exactly_once(ddp):
    _, ranks = ddp
    # 9 evaluation samples: the shards are padded to 5 + 5, and the padding must not count
    final_eval = [e for e in ranks[0]["log_history"] if "eval_loss" in e][-1]
    assert final_eval["step"] == STEPS
    for rank in ranks:
        assert final_eval["eval_loss"] == pytest.approx(rank["full_eval_loss"], rel=1e-6)
        assert rank["test_loss"] == pytest.approx(rank["full_eval_loss"], rel=1e-6)
        assert rank["prediction_shape"] == [9, 1]
        assert rank["predictions"] == pytest.approx(rank["local_predictions"], rel=1e-5)


@pytest.mark.parametrize(
    "length, world_size, batch_size", [(9, 2, 2), (5, 4, 2), (8, 2, 3), (1, 2, 4)]
)
def test_evaluation_shards_cover_the_dataset_in_order(length, world_size, batch_size):
    from trackmux.trainer import _ContiguousShardSampler

    shards = [
        _ContiguousShardSampler(length, world_size, rank, batch_size) for rank in range(world_size)
    ]
    rows = [[index for batch in shard for index in batch] for shard in shards]
    # equal rows on every rank (all_gather needs it); rank order then restores the dataset
    assert len({len(part) for part in rows}) == 1
    assert [index for part in rows for index in part][:length] == list(range(length))
    real = [
        [index for batch in shard.batches[: shard.real_batches] for index in batch]
        for shard in shards
    ]
    assert sorted(index for part in real for index in part) == list(range(length))
    assert all(len(batch) <= batch_size for shard in shards for batch in shard)
