"""Lightning DDP on 2 CPU processes (gloo): sharded, reshuffled training data; one gathered test CSV.

``fit`` and ``test`` run as real ``python -m audiosep.cli`` subprocesses with Lightning's own
``ddp`` strategy (it re-launches the command for rank 1); the single-process reference ``test`` of
the same checkpoint runs in-process.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
from lightning.pytorch.utilities.data import _update_dataloader
from recipe_args import RECIPE, REPO, TINY_MODEL, subprocess_env
from torch.utils.data import DataLoader

from audiosep.cli import main
from audiosep.data.dynamic_mixing import FreshEpochSampler
from audiosep.data.sampling import EpochShuffleSampler

DDP = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.logger=false"]


def cli(*argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m audiosep.cli ARGV`` in a fresh process (tests/ importable for the probes)."""
    env = subprocess_env()
    result = subprocess.run(
        [sys.executable, "-m", "audiosep.cli", *argv], env=env, cwd=REPO, capture_output=True, text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_ddp_fit_shards_and_reshuffles_and_test_writes_one_gathered_csv(tiny_librimix: Path, tmp_path: Path):
    ckpt_dir = tmp_path / "ckpts"
    callbacks = json.dumps([
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(ckpt_dir), "save_last": True, "save_top_k": 0}},
        {"class_path": "training_probes.RecordTrainIds", "init_args": {"out_dir": str(tmp_path / "ids")}},
    ])
    # train-360 has 6 mixtures: each rank trains on 3 per epoch (batch 1); 6 steps = 2 epochs. No
    # seed_everything: each process starts with its own random seed, and the ranks must still agree
    # on one order to shard (the data module broadcasts rank 0's).
    cli("fit", "--config", RECIPE, "--seed_everything=false", f"--data.root={tiny_librimix}", "--data.train_split=train-360",
        "--data.segment=0.25", "--data.batch_size=1", "--trainer.max_steps=6", "--trainer.max_time=null",
        "--trainer.limit_val_batches=1", "--trainer.val_check_interval=1.0", f"--trainer.callbacks={callbacks}",
        f"--trainer.default_root_dir={tmp_path}", *DDP, *QUIET, *TINY_MODEL)
    ranks = [json.loads((tmp_path / "ids" / f"train_ids.rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(ranks[0]) == sorted(ranks[1]) == ["0", "1"]
    for epoch in ("0", "1"):
        assert len(ranks[0][epoch]) == len(ranks[1][epoch]) == 3
        assert sorted(ranks[0][epoch] + ranks[1][epoch]) == sorted(set(ranks[0][epoch] + ranks[1][epoch]))
        assert len(set(ranks[0][epoch] + ranks[1][epoch])) == 6  # the ranks split the epoch, no overlap
    assert ranks[0]["0"] + ranks[1]["0"] != ranks[0]["1"] + ranks[1]["1"]  # a new order every epoch

    ckpt = ckpt_dir / "last.ckpt"
    assert ckpt.is_file()
    ddp_csv = tmp_path / "scores" / "ddp.csv"
    result = cli("test", "--config", RECIPE, f"--data.root={tiny_librimix}", f"--ckpt_path={ckpt}",
                 f"--model.test_csv={ddp_csv}", f"--trainer.default_root_dir={tmp_path}", *DDP, *QUIET, *TINY_MODEL)
    assert result.stdout.count("wrote per-utterance scores of 3 mixtures") == 1  # rank 0 only
    assert sorted(p.name for p in ddp_csv.parent.iterdir()) == ["ddp.csv"]  # one file, no rank files, no temp

    single_csv = tmp_path / "scores_single" / "single.csv"
    assert main(["test", "--config", RECIPE, f"--data.root={tiny_librimix}", f"--ckpt_path={ckpt}",
                 f"--model.test_csv={single_csv}", f"--trainer.default_root_dir={tmp_path}", *QUIET,
                 *TINY_MODEL]) == 0
    ddp_rows, single_rows = read_rows(ddp_csv), read_rows(single_csv)
    assert [r["id"] for r in ddp_rows] == [r["id"] for r in single_rows]  # each utterance once, same order
    assert len(single_rows) == 3  # the tiny test split: 3 mixtures, padded to 4 by the distributed sampler
    for ddp_row, single_row in zip(ddp_rows, single_rows, strict=True):
        for column in ("si_snr", "si_snri", "sdr", "sdri"):
            assert float(ddp_row[column]) == pytest.approx(float(single_row[column]), abs=1e-4)


@pytest.mark.parametrize("sampler_class", [FreshEpochSampler, EpochShuffleSampler])
def test_lightnings_ddp_wrapper_shards_our_samplers_and_forwards_set_epoch(sampler_class) -> None:
    """What Lightning does to a training loader under DDP: wrap the sampler, then ``set_epoch`` each epoch."""
    num_examples = 10

    def rank_draws(rank: int, epoch: int, resume: tuple[int, int] | None = None) -> list[int]:
        loader = DataLoader(list(range(num_examples)), batch_size=1, sampler=sampler_class(num_examples))
        if resume:
            loader.sampler.resume(*resume)
        distributed = _get_distributed_sampler(loader, shuffle=False, overfit_batches=0, num_replicas=2, rank=rank)
        wrapped = _update_dataloader(loader, distributed)
        _set_sampler_epoch(wrapped, epoch)
        return [int(i) for i in wrapped.sampler]

    for epoch in (0, 1, 3):
        draws = [rank_draws(rank, epoch) for rank in (0, 1)]
        assert len(draws[0]) == len(draws[1]) == 5 and not set(draws[0]) & set(draws[1])
        assert {d // num_examples for d in draws[0] + draws[1]} == {epoch}  # set_epoch reached our sampler
        assert sorted(d % num_examples for d in draws[0] + draws[1]) == list(range(num_examples))
    if sampler_class is EpochShuffleSampler:
        orders = [[d % num_examples for d in rank_draws(0, epoch)] for epoch in (0, 1)]
        assert orders[0] != orders[1]  # reshuffled
    # resuming after 2 batches per rank (4 draws in all) continues each rank where it stopped; the
    # shard keeps its length (the done draws come last, Lightning stops the epoch before them)
    for rank in (0, 1):
        resumed, unbroken = rank_draws(rank, 1, resume=(1, 4)), rank_draws(rank, 1)
        assert resumed[:3] == unbroken[2:] and sorted(resumed) == sorted(unbroken)
        # the resumed epoch is drawn whatever set_epoch said since: after a checkpoint a validation saved at an
        # epoch's end, Lightning's count runs one ahead (it drew epoch 2's order for epoch 1)
        assert rank_draws(rank, 2, resume=(1, 4)) == resumed


def test_sampler_order_is_a_function_of_seed_and_epoch() -> None:
    first, again, other = EpochShuffleSampler(8, seed=3), EpochShuffleSampler(8, seed=3), EpochShuffleSampler(8, 4)
    torch.manual_seed(123)  # the global RNG plays no part
    assert list(first) == list(again) and list(first) != list(other)


def test_a_nan_loss_on_one_rank_is_skipped_on_every_rank(tiny_librimix: Path, tmp_path: Path) -> None:
    """DDP needs every rank to step together: rank 1's NaN makes both ranks skip, nobody hangs."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, str(REPO / "tests" / "ddp_nonfinite_script.py"), str(tiny_librimix),
                             str(tmp_path)], env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["nonfinite_steps"] for r in ranks] == [1, 1]  # counted on the rank whose loss was finite too
    assert all(r["finite"] for r in ranks)
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # still the same weights on both ranks
    assert ranks[0]["batches"] == ranks[1]["batches"] == 3
    for rank in ranks:
        first, skipped, third = rank["checksums"]
        assert skipped == first and third != skipped  # the skipped step left the weights as they were


def write_tiny_librispeech(root: Path) -> Path:
    """``LibriSpeech/train-clean-100``: 4 speakers x 2 utterances of a gliding tone, 16 kHz."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    for speaker in ("103", "1034", "1040", "1069"):
        folder = root / "LibriSpeech" / "train-clean-100" / speaker / "1"
        folder.mkdir(parents=True)
        for index in range(2):
            t = np.arange(int(rng.integers(8000, 14000))) / 16000
            wave = 0.05 * sum(np.sin(2 * np.pi * k * rng.uniform(100, 250) * t) / k for k in range(1, 4))
            sf.write(folder / f"{speaker}-1-{index:04d}.flac", wave, 16000)
        (folder / f"{speaker}-1.trans.txt").write_text(f"{speaker}-1-0000 A\n{speaker}-1-0001 B\n")
    return root / "LibriSpeech"


def test_ddp_fit_on_dynamic_mixtures_shards_fresh_draws_every_epoch(tiny_librimix: Path, tmp_path: Path):
    librispeech = write_tiny_librispeech(tmp_path / "corpus")
    callbacks = json.dumps([{"class_path": "training_probes.RecordTrainIds",
                             "init_args": {"out_dir": str(tmp_path / "ids")}}])
    # 8 utterances of 2 speakers each = 4 mixtures per epoch: 2 per rank (batch 1); 4 steps = 2 epochs
    cli("fit", "--config", RECIPE, f"--data.root={tiny_librimix}", "--data.dynamic_mixing=true",
        f"--data.librispeech_root={librispeech}", f"--data.dm_cache_dir={tmp_path / 'cache'}",
        "--data.train_split=train-100", "--data.segment=0.25", "--data.batch_size=1", "--trainer.max_steps=4",
        "--trainer.max_time=null", "--trainer.limit_val_batches=1", "--trainer.val_check_interval=1.0",
        f"--trainer.callbacks={callbacks}", "--trainer.enable_checkpointing=false",
        f"--trainer.default_root_dir={tmp_path}", *DDP, *QUIET, *TINY_MODEL)
    ranks = [json.loads((tmp_path / "ids" / f"train_ids.rank{r}.json").read_text()) for r in (0, 1)]
    draws = {epoch: [[int(i.split("_")[0][2:]) for i in rank[epoch]] for rank in ranks] for epoch in ("0", "1")}
    for epoch, (first, second) in draws.items():
        assert len(first) == len(second) == 2 and not set(first) & set(second)  # both ranks work, no overlap
        assert sorted(first + second) == list(range(4 * int(epoch), 4 * int(epoch) + 4))  # new draws each epoch
    assert len(list((tmp_path / "cache").rglob("train-clean-100.index.jsonl"))) == 1


def test_audiosep_fit_destroys_the_process_group_it_trained_in(tiny_librimix: Path, tmp_path: Path) -> None:
    """A finished ``fit`` tears DDP down itself: left to the interpreter's exit, gloo's threads aborted a run
    that had succeeded (exit -6, "terminate called without an active exception", seen once in CI)."""
    from audiosep.training_cli import run_lightning_cli

    with mock.patch.dict(os.environ):  # Lightning sets LOCAL_RANK, MASTER_PORT, ...: later DDP runs would obey them
        run_lightning_cli(["fit", "--config", RECIPE, f"--data.root={tiny_librimix}", *TINY_MODEL, *QUIET,
                           "--trainer.strategy=ddp", "--trainer.devices=1", "--trainer.accelerator=cpu",
                           "--trainer.max_steps=1", "--trainer.limit_val_batches=0", "--data.num_workers=0",
                           f"--trainer.default_root_dir={tmp_path}"])
    assert torch.distributed.is_available() and not torch.distributed.is_initialized()


def test_audiosep_fit_leaves_a_process_group_its_caller_made(tiny_librimix: Path, tmp_path: Path) -> None:
    """Only the group a run made is the run's to end: a program that calls the CLI inside its own group keeps it."""
    from audiosep.training_cli import run_lightning_cli

    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        run_lightning_cli(["fit", "--config", RECIPE, f"--data.root={tiny_librimix}", *TINY_MODEL, *QUIET,
                           "--trainer.devices=1", "--trainer.accelerator=cpu", "--trainer.max_steps=1",
                           "--trainer.limit_val_batches=0", "--data.num_workers=0",
                           f"--trainer.default_root_dir={tmp_path}"])
        assert torch.distributed.is_initialized()
        total = torch.ones(1)
        torch.distributed.all_reduce(total)  # still usable
        assert total.item() == 1.0
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
