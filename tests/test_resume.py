"""Exact resume: a training subprocess SIGKILLed mid-epoch and resumed with ``--ckpt_path last``
ends with the same weights as an unbroken run; checkpoints are atomic under SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch
from recipe_args import RECIPE, REPO, TINY_MODEL, subprocess_env

from audiosep.checkpoint_io import AtomicCheckpointIO
from audiosep.training_cli import find_last_checkpoint, run_lightning_cli

MAX_STEPS, CKPT_EVERY, KILL_AT = 10, 4, 7  # train-360 has 6 mixtures: batch 1 = 6 steps per epoch


def fit_argv(root: Path, out: Path, *, pause_at: int | None = None, resume: bool = False) -> list[str]:
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"every_n_train_steps": CKPT_EVERY, "save_last": True, "save_top_k": -1,
                       "filename": "{step}"}},
        {"class_path": "training_probes.SaveFinalWeights", "init_args": {"path": str(out / "final.pt")}},
    ]
    if pause_at is not None:
        callbacks.append({"class_path": "training_probes.PauseAtStep",
                          "init_args": {"step": pause_at, "marker": str(out / "paused.json")}})
    return [
        sys.executable, "-m", "audiosep.cli", "fit", "--config", RECIPE, f"--data.root={root}",
        "--data.train_split=train-360", "--data.segment=0.25", "--data.batch_size=1",
        f"--trainer.max_steps={MAX_STEPS}", "--trainer.max_time=null", "--trainer.limit_val_batches=1",
        "--trainer.deterministic=true", "--trainer.enable_progress_bar=false",
        f"--trainer.callbacks={json.dumps(callbacks)}", f"--trainer.default_root_dir={out}",
        "--lr_scheduler=torch.optim.lr_scheduler.StepLR", "--lr_scheduler.step_size=1",
        "--lr_scheduler.gamma=0.5", *TINY_MODEL, *(["--ckpt_path=last"] if resume else []),
    ]


def run(argv: list[str]) -> None:
    result = subprocess.run(argv, env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def fit_paused_at(root: Path, out: Path, step: int) -> subprocess.Popen:
    """A `fit` process, once it has paused at ``step`` (:class:`training_probes.PauseAtStep`)."""
    process = subprocess.Popen(fit_argv(root, out, pause_at=step), env=subprocess_env(), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 180
    while not (out / "paused.json").is_file():
        assert process.poll() is None, f"training ended before step {step}: {process.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"training never reached step {step}"
        time.sleep(0.2)
    return process


def test_sigkill_mid_epoch_then_ckpt_path_last_ends_with_the_weights_of_an_unbroken_run(
    tiny_librimix: Path, tmp_path: Path
) -> None:
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    unbroken.mkdir(), broken.mkdir()
    run(fit_argv(tiny_librimix, unbroken))

    process = fit_paused_at(tiny_librimix, broken, KILL_AT)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    assert not (broken / "final.pt").exists()
    last = find_last_checkpoint(broken)
    assert last is not None and last.name == "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 4  # the newest checkpoint is mid-epoch 0 (4 of its 6 batches done)
    assert saved["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 0
    assert saved["LibriMixDataModule"] == {"epoch": 0, "batches": 4, "seed": 0}

    run(fit_argv(tiny_librimix, broken, resume=True))
    expected = torch.load(unbroken / "final.pt", weights_only=True)
    resumed = torch.load(broken / "final.pt", weights_only=True)
    assert expected["step"] == resumed["step"] == MAX_STEPS
    assert resumed["batches_here"] == MAX_STEPS - 4  # it did resume at step 4 (not start over)
    assert expected["state_dict"].keys() == resumed["state_dict"].keys()
    mismatched = [k for k, v in expected["state_dict"].items() if not torch.equal(v, resumed["state_dict"][k])]
    assert not mismatched, f"weights differ after resume: {mismatched}"


def test_a_terminated_fit_exits_143_not_0(tiny_librimix: Path, tmp_path: Path) -> None:
    """Lightning stops on SIGTERM with a SystemExit of no code: exit 0, so `fit && test` or a scheduler's afterok
    went on with an unfinished model (reviewer)."""
    process = fit_paused_at(tiny_librimix, tmp_path, 2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    assert process.stderr.read().splitlines()[-1] == "audiosep: terminated"
    assert not (tmp_path / "final.pt").exists()


def test_a_resume_from_an_other_step_does_not_match(tiny_librimix: Path, tmp_path: Path) -> None:
    """The comparison above can fail: an unbroken run of one step less ends with other weights."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    argv_a = fit_argv(tiny_librimix, tmp_path / "a")
    argv_b = [a.replace(f"max_steps={MAX_STEPS}", f"max_steps={MAX_STEPS - 1}") for a in fit_argv(tiny_librimix, tmp_path / "b")]
    run(argv_a), run(argv_b)
    a = torch.load(tmp_path / "a" / "final.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "final.pt", weights_only=True)["state_dict"]
    assert any(not torch.equal(v, b[k]) for k, v in a.items())


KEEP_SAVING = textwrap.dedent("""
    import sys, torch
    from audiosep.checkpoint_io import AtomicCheckpointIO
    io, path = AtomicCheckpointIO(), sys.argv[1]
    step = 0
    while True:
        io.save_checkpoint({"step": step, "weights": torch.full((4_000_000,), float(step))}, path)
        step += 1
        if step == 1:
            open(path + ".started", "w").close()
""")


def test_sigkill_while_saving_never_leaves_a_corrupt_last_ckpt(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    for attempt in range(3):
        process = subprocess.Popen([sys.executable, "-c", KEEP_SAVING, str(path)], env=subprocess_env(), cwd=REPO)
        deadline = time.monotonic() + 60
        while not Path(str(path) + ".started").is_file():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3 + 0.37 * attempt)  # several saves in, most likely in the middle of one
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert find_last_checkpoint(tmp_path) == path  # a killed save's temp file is never a candidate
        saved = torch.load(path, weights_only=True)  # whole: it loads, and its values are one save's
        assert torch.equal(saved["weights"], torch.full((4_000_000,), float(saved["step"])))
    leftovers = [p.name for p in path.parent.iterdir() if p.name not in {"last.ckpt", "last.ckpt.started"}]
    assert all(name.startswith(".last.ckpt.") and name.endswith(".tmp") for name in leftovers)


def test_audiosep_fit_saves_with_the_atomic_checkpoint_io(tiny_librimix: Path, tmp_path: Path) -> None:
    cli = run_lightning_cli(["--config", RECIPE, f"--data.root={tiny_librimix}",
                             f"--trainer.default_root_dir={tmp_path}", *TINY_MODEL], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_resumed_data_module_keeps_the_seed_of_the_interrupted_run(tiny_librimix: Path) -> None:
    """Without seed_everything the seed is torch's random initial one: a resume must not draw a new one."""
    from audiosep.data.librimix import LibriMixDataModule

    module = LibriMixDataModule(str(tiny_librimix), train_split="train-360", segment=0.25, batch_size=1,
                                num_workers=0)
    module.load_state_dict({"epoch": 0, "batches": 2, "seed": 12345})
    sampler = module.train_dataloader().sampler
    assert sampler.seed == 12345 and module.train_dataloader().sampler.seed == 12345  # reloads keep it
    fresh = LibriMixDataModule(str(tiny_librimix), train_split="train-360", segment=0.25, batch_size=1,
                               num_workers=0)
    assert fresh.train_dataloader().sampler.seed == torch.initial_seed()


def test_librimix_recipes_keep_one_last_ckpt_updated_every_n_steps_and_at_validation(
    tiny_librimix: Path, tmp_path: Path
) -> None:
    """The recipes' two checkpoint callbacks (best by validation, and every 2000 steps) share one
    ``last.ckpt``, always the newest state (no ``last-v1.ckpt`` beside it)."""
    import yaml

    from audiosep.cli import main

    for name in ("convtasnet", "sepformer", "resepformer", "tiny_sepformer"):
        callbacks = yaml.safe_load((REPO / "recipes" / "librimix" / f"{name}.yaml").read_text())["trainer"]["callbacks"]
        checkpoints = [c["init_args"] for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]
        assert any(c.get("every_n_train_steps") for c in checkpoints), name
        assert all(c.get("save_last") and c.get("enable_version_counter") is False for c in checkpoints), name
    callbacks = yaml.safe_load((REPO / "recipes" / "librimix" / "convtasnet.yaml").read_text())["trainer"]["callbacks"]
    callbacks = [c for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]
    callbacks[1]["init_args"]["every_n_train_steps"] = 4
    assert main(["fit", "--config", RECIPE, f"--data.root={tiny_librimix}", "--data.train_split=train-360",
                 "--data.segment=0.25", "--data.batch_size=1", "--trainer.max_steps=10", "--trainer.max_time=null",
                 "--trainer.limit_val_batches=1", "--trainer.val_check_interval=1.0",
                 "--trainer.enable_progress_bar=false", f"--trainer.callbacks={json.dumps(callbacks)}",
                 f"--trainer.default_root_dir={tmp_path}", *TINY_MODEL]) == 0
    lasts = sorted(p.name for p in tmp_path.rglob("last*.ckpt"))
    assert lasts == ["last.ckpt"]
    # saved at steps 4 and 8 (every 4), 6 and 10 (validation: end of epoch 0, end of the run)
    assert torch.load(find_last_checkpoint(tmp_path), weights_only=False)["global_step"] == 10


def test_ckpt_path_last_with_no_checkpoint_yet_starts_from_scratch(tiny_librimix: Path, tmp_path: Path) -> None:
    """So a SLURM job script can always pass ``--ckpt_path last``, first submission included."""
    from audiosep.cli import main

    assert main(["fit", "--config", RECIPE, f"--data.root={tiny_librimix}", "--data.segment=0.25",
                 "--data.batch_size=2", "--trainer.max_steps=1", "--trainer.limit_val_batches=1",
                 "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
                 "--ckpt_path=last", *TINY_MODEL]) == 0
    assert torch.load(find_last_checkpoint(tmp_path), weights_only=False)["global_step"] == 1


def test_ckpt_path_last_under_a_relative_root_starting_with_http_resumes(
    tiny_librimix: Path, tmp_path: Path, monkeypatch
) -> None:
    """Lightning takes a relative path starting with "http" for a URL: the found checkpoint goes to it resolved."""
    from audiosep.cli import main

    monkeypatch.chdir(tmp_path)
    argv = ["fit", "--config", RECIPE, f"--data.root={tiny_librimix}", "--data.segment=0.25", "--data.batch_size=2",
            "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
            "--trainer.default_root_dir=http_runs", "--ckpt_path=last", *TINY_MODEL]  # fmt: skip
    assert main([*argv, "--trainer.max_steps=1"]) == 0
    assert main([*argv, "--trainer.max_steps=2"]) == 0
    assert torch.load(find_last_checkpoint(tmp_path / "http_runs"), weights_only=False)["global_step"] == 2


def test_ckpt_path_last_takes_the_newest_of_last_and_slurm_requeue_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "lightning_logs" / "version_0" / "checkpoints").mkdir(parents=True)
    older = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    for path, mtime in ((older, 1_000), (hpc, 2_000), (tmp_path / ".last.ckpt.abc.tmp", 3_000),
                        (tmp_path / "best-epoch=3.ckpt", 3_000)):
        path.write_bytes(b"x")
        os.utime(path, (mtime, mtime))
    assert find_last_checkpoint(tmp_path) == hpc
    os.utime(older, (4_000, 4_000))
    assert find_last_checkpoint(tmp_path) == older


def deflated(checkpoint: Path, out: Path) -> Path:
    """``checkpoint`` re-packed with compressed entries (what torch.load would inflate in memory)."""
    with zipfile.ZipFile(checkpoint) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for entry in source.infolist():
            target.writestr(entry.filename, source.read(entry))
    return out


def test_a_checkpoint_of_another_model_or_kind_is_one_error_line_before_training(
    tiny_librimix: Path, tmp_path: Path, capsys
) -> None:
    """Lightning alone ends these in multi-line tracebacks (size mismatch, KeyError, IsADirectoryError)."""
    from audiosep.checkpoint import save_model
    from audiosep.cli import main
    from audiosep.models import conv_tasnet_demo

    out = tmp_path / "run"
    argv = fit_argv(tiny_librimix, out)[3:]  # in process: drop "python -m audiosep.cli"
    argv = [a for a in argv if not a.startswith("--trainer.max_steps")] + ["--trainer.max_steps=1"]
    assert main(argv) == 0
    last = find_last_checkpoint(out)
    model_file = tmp_path / "model.pt"
    save_model(conv_tasnet_demo(), model_file, {"sample_rate": 8000})
    wider = [*argv, "--model.model.init_args.hidden_channels=24"]
    cases = [
        ([*argv, f"--ckpt_path={tmp_path / 'missing.ckpt'}"], "no such file"),
        ([*argv, f"--ckpt_path={model_file}"], "not a Lightning training checkpoint"),
        ([*wider, f"--ckpt_path={last}"], "holds another model than the recipe's"),
        ([*argv, "--ckpt_path=http://127.0.0.1:9/last.ckpt"], "only local checkpoint files are read"),
        ([*argv, f"--ckpt_path={deflated(last, tmp_path / 'deflated.ckpt')}"], "is compressed with deflate"),
        ([*argv, "--ckpt_path=best"], "not used by audiosep's training commands"),
        ([*argv, "--ckpt_path=registry:org/model"], "not used by audiosep's training commands"),
        ([*argv, f"--ckpt_path={out}"], "a folder; give a checkpoint file"),
    ]
    for case, message in cases:
        capsys.readouterr()
        assert main(case) == 1
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and message in err[0] and err[0].startswith("audiosep: error: --ckpt_path ")


def test_a_checkpoints_hyper_parameters_do_not_override_the_recipe(
    tiny_librimix: Path, tmp_path: Path, monkeypatch
) -> None:
    """Lightning merges ``hyper_parameters`` into the config: a crafted checkpoint set ``test_csv`` to any file.
    The checkpoint's relative path starts with "http", which Lightning alone takes for a URL."""
    from audiosep.cli import main

    out = tmp_path / "run"
    argv = fit_argv(tiny_librimix, out)[3:]
    argv = [a for a in argv if not a.startswith("--trainer.max_steps")] + ["--trainer.max_steps=1"]
    assert main(argv) == 0
    victim, crafted = tmp_path / "victim.txt", tmp_path / "http_runs" / "crafted.ckpt"
    crafted.parent.mkdir()
    victim.write_text("precious")
    checkpoint = torch.load(find_last_checkpoint(out), weights_only=True)
    checkpoint["hyper_parameters"] = {"_class_path": "audiosep.tasks.separation.SeparationTask", "test_csv": str(victim)}
    torch.save(checkpoint, crafted)
    scores = tmp_path / "scores.csv"
    monkeypatch.chdir(tmp_path)
    test_argv = ["test", *argv[1:], f"--model.test_csv={scores}", "--ckpt_path=http_runs/crafted.ckpt"]
    assert main(test_argv) == 0
    assert victim.read_text() == "precious" and scores.read_text().startswith("id,")


def test_last_skips_the_checkpoints_of_other_models_below_the_root(tmp_path: Path) -> None:
    """``--ckpt_path last`` searches the whole tree: another job's newer last.ckpt must not be taken."""
    ours, theirs = tmp_path / "a" / "last.ckpt", tmp_path / "pruned.ckpt.work" / "finetune" / "last.ckpt"
    for age, (path, width) in enumerate(((theirs, 3), (ours, 4))):  # ours 1 s older than theirs
        path.parent.mkdir(parents=True)
        torch.save({"pytorch-lightning_version": "2", "state_dict": {"model.w": torch.zeros(width)}}, path)
        os.utime(path, (1_000_000 - age, 1_000_000 - age))
    assert find_last_checkpoint(tmp_path) == theirs  # the newest
    assert find_last_checkpoint(tmp_path, {"model.w": (4,)}) == ours
    assert find_last_checkpoint(tmp_path, {"model.w": (5,)}) is None


def test_a_mid_epoch_resume_with_dataloader_workers_continues_the_epoch(tiny_librimix: Path, tmp_path: Path) -> None:
    """Lightning makes the epoch's iterator before it calls set_epoch, and workers draw indices at once: a resumed
    run drew epoch 0's order instead of the saved epoch's (the recipes use 4 to 8 workers)."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from audiosep.data.librimix import LibriMixDataModule
    from audiosep.models import ConvTasNet
    from audiosep.tasks.separation import SeparationTask

    class Log(pl.Callback):
        def __init__(self) -> None:
            self.ids: list[tuple[str, ...]] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            self.ids.append(tuple(batch[2]))

    def fit(root: Path, ckpt_path: str | None = None, limit: int | None = None) -> list[tuple[str, ...]]:
        log = Log()
        every_step = ModelCheckpoint(dirpath=root, every_n_train_steps=1, save_top_k=-1, filename="{step}")
        trainer = pl.Trainer(
            max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, limit_val_batches=0, callbacks=[log, every_step], default_root_dir=root,
            limit_train_batches=limit,
        )  # fmt: skip
        pl.seed_everything(0)
        model = ConvTasNet(enc_num_filters=16, enc_kernel_size=8, bottleneck_channels=8, hidden_channels=12,
                           skip_channels=8, num_layers=2, num_repeats=1)  # fmt: skip
        data = LibriMixDataModule(str(tiny_librimix), segment=0.25, batch_size=1, num_workers=1, seed=3)
        trainer.fit(SeparationTask(model), data, ckpt_path=ckpt_path)
        return log.ids

    unbroken = fit(tmp_path / "a")
    for step in (6, 8):  # after epoch 0's last batch (6 mixtures, batch size 1), and mid-epoch
        assert fit(tmp_path / f"b{step}", str(tmp_path / "a" / f"step={step}.ckpt")) == unbroken[step:]
    limited = fit(tmp_path / "c", limit=4)  # epochs of 4 of the 6 batches: step 4 ends epoch 0
    assert fit(tmp_path / "d", str(tmp_path / "c" / "step=4.ckpt"), limit=4) == limited[4:]


def test_a_resume_with_another_optimizer_is_one_line_and_a_changed_lr_is_warned(
    tiny_librimix: Path, tmp_path: Path, capsys
) -> None:
    """Lightning loads the saved state into the recipe's optimizer: Adam saved and SGD configured ended in a
    ``KeyError: 'momentum'`` traceback, and a new ``lr`` was replaced by the saved one without a word (reviewer)."""
    import pytest

    from audiosep.cli import main

    out = tmp_path / "run"
    argv = [a for a in fit_argv(tiny_librimix, out)[3:] if not a.startswith("--trainer.max_steps")]
    assert main([*argv, "--trainer.max_steps=1"]) == 0
    last = str(find_last_checkpoint(out))
    capsys.readouterr()
    assert main([*argv, "--trainer.max_steps=2", f"--ckpt_path={last}", "--optimizer=torch.optim.SGD",
                 "--optimizer.lr=0.1", "--optimizer.momentum=0.9"]) == 1  # fmt: skip
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "trained with another optimizer than the recipe's SGD" in err[0], err
    with pytest.warns(UserWarning, match="the learning rate is its 0.002, not the recipe's 0.0005") as caught:
        assert main([*argv, "--trainer.max_steps=2", f"--ckpt_path={last}", "--optimizer.lr=5e-4"]) == 0
        import warnings

        from audiosep.data.sampling import RESUME_WARNING

        # the quiet lasted for this resume only: filters are process-wide (diff reviewer)
        assert not [f for f in warnings.filters if getattr(f[1], "pattern", None) == RESUME_WARNING]
    # a mid-epoch resume (step 1 of 6) is exact here: Lightning's "unreliable results" warning is not shown
    assert not [w for w in caught if "dataloader is not resumable" in str(w.message)]


def test_an_older_torchs_checkpoint_of_the_same_optimizer_resumes() -> None:
    """The check compared the sets of setting names: an Adam saved without ``decoupled_weight_decay`` (older
    torch; torch's loader fills it in) was refused as another optimizer (diff reviewer)."""
    import types

    from audiosep.tasks.guards import TrainingGuards

    weight = torch.nn.Parameter(torch.zeros(3))
    saved = torch.optim.Adam([weight], lr=1e-3).state_dict()
    for group in saved["param_groups"]:
        group.pop("decoupled_weight_decay", None)
    guards = TrainingGuards()
    guards._trainer = types.SimpleNamespace(optimizers=[torch.optim.Adam([weight], lr=1e-3)], lr_scheduler_configs=[])
    guards.load_guards({"optimizer_states": [saved]})  # accepted
    guards._trainer.optimizers = [torch.optim.SGD([weight], lr=1e-3)]
    import pytest

    from audiosep.errors import ConfigError

    with pytest.raises(ConfigError, match="another optimizer than the recipe's SGD .its settings amsgrad, betas"):
        guards.load_guards({"optimizer_states": [saved]})


def test_a_saved_optimizer_state_of_another_shape_is_refused_before_the_first_step() -> None:
    """An ``exp_avg`` of [1] for a [3, 2] parameter passed every check and ended in a size-mismatch traceback at
    Adam's first step (reviewer)."""
    import types

    from audiosep.errors import ConfigError
    from audiosep.tasks.guards import TrainingGuards

    weight = torch.nn.Parameter(torch.zeros(3, 2))
    trained = torch.optim.Adam([weight], lr=1e-3)
    weight.grad = torch.ones(3, 2)
    trained.step()
    saved = trained.state_dict()
    guards = TrainingGuards()
    guards._trainer = types.SimpleNamespace(optimizers=[torch.optim.Adam([weight], lr=1e-3)], lr_scheduler_configs=[])
    guards.load_guards({"optimizer_states": [saved]})  # accepted
    saved["state"][0]["exp_avg"] = torch.zeros(1)
    with pytest.raises(ConfigError, match=r"Adam state 'exp_avg' of parameter 0 has shape \(1,\), not its parameter's \(3, 2\)"):
        guards.load_guards({"optimizer_states": [saved]})
    saved["state"] = {5: {"exp_avg": torch.zeros(3, 2)}}
    with pytest.raises(ConfigError, match="state 'exp_avg' is for parameter 5, and the recipe's Adam has 1"):
        guards.load_guards({"optimizer_states": [saved]})


def test_a_resume_checkpoint_with_a_storage_record_shorter_than_its_tensor_is_one_line(tmp_path: Path) -> None:
    """Read with mmap, the check took the neighbouring bytes for the tensor's; Lightning's own load then ended in
    a traceback (record size does not match) under --ckpt_path last (reviewer)."""
    from audiosep.training_cli import checkpoint_problem

    whole = tmp_path / "whole.ckpt"
    weights = {"w": torch.zeros(1264), "b": torch.ones(4096)}  # b: the bytes after a cut w, within the file
    torch.save({"pytorch-lightning_version": "2.6", "state_dict": weights}, whole)
    cut = tmp_path / "cut.ckpt"
    with zipfile.ZipFile(whole) as source, zipfile.ZipFile(cut, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info.filename)
            target.writestr(info.filename, data[:8] if info.filename.endswith("/data/0") else data)
    expected = {"w": (1264,), "b": (4096,)}
    assert checkpoint_problem(whole, expected) is None
    problem = checkpoint_problem(cut, expected)
    assert problem is not None and problem.startswith("not a readable checkpoint") and "\n" not in problem


DIRPATH = "/runs/a/checkpoints"
CHECKPOINT_CALLBACK = "ModelCheckpoint{...}"
SAVED_CHECKPOINTS = {  # a ModelCheckpoint state as Lightning saves it (monitor="step": int scores; a filename with
    "monitor": "step", "best_model_score": torch.tensor(7), "best_model_path": f"{DIRPATH}/best.ckpt",  # a "/" in it)
    "current_score": torch.tensor(7), "dirpath": DIRPATH, "best_k_models": {f"{DIRPATH}/epoch/e1.ckpt": torch.tensor(7)},
    "kth_best_model_path": f"{DIRPATH}/epoch/e1.ckpt", "kth_value": torch.tensor(float("inf")), "last_model_path": "",
}  # fmt: skip
def saved_adam(group: dict | None = None, moments: dict | None = None) -> dict:
    """An Adam state as torch saves it after one step, with ``group`` and ``moments`` replacing entries."""
    weight = torch.nn.Parameter(torch.ones(3))
    adam = torch.optim.Adam([weight], lr=0.002)
    weight.sum().backward()
    adam.step()
    state = adam.state_dict()
    state["param_groups"][0].update(group or {})
    state["state"][0].update(moments or {})
    return state


SAVED_SCHEDULER = {"step_size": 1, "gamma": 0.1, "base_lrs": [0.002], "last_epoch": 1, "_step_count": 2,
                   "_is_initial": False, "_get_lr_called_within_step": False, "_last_lr": [0.0002]}  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"audiosep_rng_states": {"torch": torch.zeros(7, dtype=torch.uint8)}}, "its saved RNG states cannot be restored"),
        ({"audiosep_rng_states": {}}, "its saved RNG states cannot be restored (KeyError"),
        ({"audiosep_nonfinite_steps": "abc"}, "its audiosep_nonfinite_steps is 'abc', not a count"),
        ({"LibriMixDataModule": {"epoch": 1, "batches": "x"}}, "its LibriMixDataModule position is"),
        ({"LibriMixDataModule": {"epoch": -1, "batches": 0}}, "its LibriMixDataModule position is"),
        # A crafted ModelCheckpoint state made `audiosep fit` delete any folder: Lightning removes the paths it
        # restores when it replaces them, recursively, and `..` passed its folder test (reviewer).
        ({"callbacks": {CHECKPOINT_CALLBACK: SAVED_CHECKPOINTS | {"last_model_path": f"{DIRPATH}/../../victim"}}},
         "its 'ModelCheckpoint{...}' state names '/runs/a/checkpoints/../../victim', not a .ckpt file below its"),
        ({"callbacks": {CHECKPOINT_CALLBACK: SAVED_CHECKPOINTS | {"last_model_path": f"{DIRPATH}/../../x.ckpt"}}},
         "its 'ModelCheckpoint{...}' state names"),
        ({"callbacks": {CHECKPOINT_CALLBACK: SAVED_CHECKPOINTS | {"dirpath": f"{DIRPATH}/../../victim",
                                                                  "best_model_path": f"{DIRPATH}/../../victim/x.ckpt"}}},
         "its 'ModelCheckpoint{...}' state names '/runs/a/checkpoints/../../victim/x.ckpt'"),  # dirpath is the file's too
        ({"callbacks": {CHECKPOINT_CALLBACK: SAVED_CHECKPOINTS | {"best_k_models": {"/etc/passwd": 1.0}}}},
         "its 'ModelCheckpoint{...}' state names '/etc/passwd'"),
        ({"callbacks": {CHECKPOINT_CALLBACK: {k: v for k, v in SAVED_CHECKPOINTS.items() if k != "dirpath"}}},
         "its 'ModelCheckpoint{...}' state has no checkpoint folder (dirpath)"),
        ({"callbacks": {CHECKPOINT_CALLBACK: SAVED_CHECKPOINTS | {"kth_value": "x"}}}, "its 'ModelCheckpoint{...}' state has scores"),
        ({"callbacks": {"EarlyStopping{...}": {"wait_count": "x", "patience": 3}}}, "its 'EarlyStopping{...}' state is"),
        # Strings where counts belong ended `fit` mid-training in a traceback (reviewer).
        ({"loops": {"fit_loop": {"epoch_progress": {"total": {"ready": "x"}}}}},
         "its loop progress 'fit_loop.epoch_progress.total.ready' is 'x', not a count"),
        ({"lr_schedulers": [SAVED_SCHEDULER | {"last_epoch": "x"}]}, "its lr_schedulers state has last_epoch 'x', not a number"),
        ({"lr_schedulers": [SAVED_SCHEDULER | {"optimizer": {}}]}, "its lr_schedulers state sets 'optimizer', not a scheduler"),
        # A NaN rate, a negative second moment or betas out of range trained to NaN weights with exit 0; texts
        # and a Lightning version that is none, or too old to migrate, were tracebacks (reviewer).
        ({"optimizer_states": [saved_adam({"lr": float("nan")})]}, "its optimizer state 0 has 'lr' nan: not finite"),
        ({"optimizer_states": [saved_adam({"lr": "abc"})]}, "its optimizer state 0 has 'lr' 'abc': not a number"),
        ({"optimizer_states": [saved_adam({"betas": (5.0, -3.0)})]}, "its optimizer state 0 has 'betas' (5.0, -3.0): not in"),
        ({"optimizer_states": [saved_adam({"weight_decay": -1.0})]}, "its optimizer state 0 has 'weight_decay' -1.0: negative"),
        ({"optimizer_states": [saved_adam(moments={"exp_avg_sq": -torch.ones(3)})]},
         "its optimizer state 0, parameter 0: 'exp_avg_sq' is negative, though a sum of squares"),
        ({"optimizer_states": [saved_adam(moments={"exp_avg": torch.full((3,), float("inf"))})]},
         "its optimizer state 0, parameter 0: 'exp_avg' holds NaN or infinite values"),
        ({"optimizer_states": [saved_adam(moments={"step": "x"})]}, "its optimizer state 0, parameter 0: 'step' is 'x', not a count"),
        ({"optimizer_states": "x"}, "its optimizer_states are 'x', not one state per optimizer"),
        ({"pytorch-lightning_version": "not.a.version"}, "its pytorch-lightning_version 'not.a.version' is not a version"),
        ({"pytorch-lightning_version": "0.9.0"}, "it was saved by Lightning 0.9.0: audiosep resumes checkpoints of"),
    ],
)
def test_a_resume_checkpoint_whose_training_state_cannot_be_restored_is_one_line(
    tmp_path: Path, extra: dict, says: str
) -> None:
    """Each passed the pre-check and then ended in a traceback in the restore hooks (reviewer), or worse."""
    from audiosep.rng import collect_rng_states
    from audiosep.training_cli import checkpoint_problem

    good = {"pytorch-lightning_version": "2.6", "state_dict": {"w": torch.zeros(3)},
            "audiosep_rng_states": collect_rng_states(), "audiosep_nonfinite_steps": 2,
            "LibriMixDataModule": {"epoch": 1, "batches": 4, "seed": 7},
            "callbacks": {CHECKPOINT_CALLBACK: SAVED_CHECKPOINTS, "EarlyStopping{...}": {"wait_count": 0, "patience": 3}},
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 1}, "is_last_batch": False}}},
            "lr_schedulers": [SAVED_SCHEDULER], "optimizer_states": [saved_adam()]}  # fmt: skip
    torch.save(good, tmp_path / "good.ckpt")
    assert checkpoint_problem(tmp_path / "good.ckpt", {"w": (3,)}) is None
    torch.save(good | extra, tmp_path / "bad.ckpt")
    problem = checkpoint_problem(tmp_path / "bad.ckpt", {"w": (3,)})
    assert problem is not None and problem.startswith(says), problem


def test_the_optimizer_state_of_every_torch_optimizer_passes_the_resume_check() -> None:
    """Adafactor's eps=(None, 1e-3) was refused as "not finite numbers" (diff review): None stands for a derived value."""
    from audiosep.training_cli import optimizers_problem

    for name in sorted(n for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type)):
        cls = getattr(torch.optim, name)
        if not issubclass(cls, torch.optim.Optimizer) or cls is torch.optim.Optimizer:
            continue
        weight = torch.nn.Parameter(torch.ones(3, 2))
        optimizer = cls([weight], **({"lr": 0.01} if name in ("SGD", "LBFGS", "SparseAdam") else {}))

        def closure(optimizer: torch.optim.Optimizer = optimizer, weight: torch.Tensor = weight) -> torch.Tensor:
            optimizer.zero_grad()
            loss = (weight**2).sum()
            loss.backward()
            return loss

        if name != "SparseAdam":  # sparse gradients only
            optimizer.step(closure)
        assert optimizers_problem([optimizer.state_dict()]) is None, name
    assert optimizers_problem([saved_adam({"lr": None})]) is None  # a relative-step schedule's "derived" rate
    assert optimizers_problem([saved_adam({"eps": (None, "x")})]) == "its optimizer state 0 has 'eps' (None, 'x'): not a number"


def test_a_model_record_nested_beyond_reason_is_a_problem_not_a_recursion_error() -> None:
    """A checkpoint's model record nested 100 000 deep loads, then the run comparison raised RecursionError (diff
    review)."""
    from audiosep.models import conv_tasnet_demo
    from audiosep.training_cli import other_run_problem

    deep: dict = {}
    inner = deep
    for _ in range(100_000):
        inner["a"] = inner = {}
    record = {"class_path": "audiosep.models.conv_tasnet.ConvTasNet", "init_args": deep}
    problem = other_run_problem({"audiosep_model": record}, conv_tasnet_demo(num_repeats=1), None)
    assert problem == "its model or data record is nested too deeply to be one of audiosep's"


def test_a_loop_state_nested_beyond_reason_is_one_line_not_a_recursion_error() -> None:
    """100 000 nested dicts under ``loops`` (torch.load reads them) ended in a RecursionError traceback (reviewer)."""
    from audiosep.training_cli import MAX_STATE_DEPTH, loops_problem

    deep: dict = {}
    inner = deep
    for _ in range(100_000):
        inner["a"] = inner = {}
    assert loops_problem({"fit_loop": deep}) == f"its loops state is nested more than {MAX_STATE_DEPTH} deep"
    assert loops_problem({"fit_loop": {"epoch_progress": {"total": {"ready": 2}}}}) is None


def test_a_resume_from_the_checkpoint_a_validation_saved_ends_with_the_unbroken_weights(
    tiny_librimix: Path, tmp_path: Path
) -> None:
    """Saved when epoch 0's validation ended (as the demo recipe saves), a resume made Lightning pass set_epoch its
    processed-epoch count, one ahead for the rest of the run: each later epoch drew the next one's batches, and a
    killed-and-rerun `audiosep demo` ended with other weights than an unbroken one (reviewer)."""
    from unittest import mock

    def fit(root: Path, steps: int, ckpt_path: str | None = None) -> dict[str, torch.Tensor]:
        argv = ["--config", RECIPE, f"--data.root={tiny_librimix}", "--data.train_split=train-360",
                "--data.segment=0.25", "--data.batch_size=1", "--data.num_workers=0", "--seed_everything=0",
                f"--trainer.max_steps={steps}", "--trainer.val_check_interval=1.0", "--trainer.limit_val_batches=1",
                "--trainer.max_time=null", "--trainer.enable_progress_bar=false", "--trainer.logger=false",
                f"--trainer.default_root_dir={root}", *TINY_MODEL]  # fmt: skip
        with mock.patch.dict(os.environ):
            cli = run_lightning_cli(argv, run=False)
            cli.trainer.checkpoint_callback.dirpath = str(root / "checkpoints")
            cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
        return {k: v.clone() for k, v in cli.model.state_dict().items()}

    unbroken = fit(tmp_path / "a", 18)  # 6 mixtures, batch 1: 3 epochs, a validation and a save at each epoch's end
    fit(tmp_path / "b", 6)  # stopped after epoch 0: its last.ckpt is the one its validation saved
    resumed = fit(tmp_path / "b", 18, str(tmp_path / "b" / "checkpoints" / "last.ckpt"))
    assert all(torch.equal(resumed[name], value) for name, value in unbroken.items())


def test_lightnings_litlogger_advertisement_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    """Every demo printed "💡 Tip: ... try installing [litlogger]" (Lightning 2.6): noise between our own lines."""
    import logging

    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing [litlogger](https://pypi.org/project/litlogger/)")
        rank_zero_info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


def test_the_checkpoint_io_removes_checkpoint_files_only(tmp_path: Path) -> None:
    """Lightning removes replaced checkpoints with a recursive ``rm``; ours never removes a folder or another file."""
    from audiosep.checkpoint_io import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    folder, other, ckpt, link = tmp_path / "precious.ckpt", tmp_path / "notes.txt", tmp_path / "last.ckpt", tmp_path / "link.ckpt"
    folder.mkdir()
    (folder / "data.txt").write_text("keep")
    other.write_text("keep")
    ckpt.write_bytes(b"x")
    link.symlink_to(folder)
    (tmp_path / "run").mkdir()
    for refused in (folder, other, tmp_path / "run" / ".." / "last.ckpt"):  # "..": what Lightning's test lets by
        with pytest.warns(UserWarning, match="not a checkpoint file"):
            io.remove_checkpoint(refused)
        assert refused.exists()
    io.remove_checkpoint(link)  # a link goes, never what it points to
    io.remove_checkpoint(ckpt)
    assert not link.is_symlink() and not ckpt.exists() and (folder / "data.txt").read_text() == "keep"


def fsdp_sharded_checkpoint(folder: Path) -> Path:
    """A sharded checkpoint as Lightning's FSDP strategy writes one (its own save call and metadata file name)."""
    import warnings

    from lightning.fabric.strategies.fsdp import _distributed_checkpoint_save
    from lightning.fabric.utilities.load import _METADATA_FILENAME

    folder.mkdir()
    with warnings.catch_warnings():  # torch.distributed.checkpoint warns that no process group is initialised
        warnings.simplefilter("ignore")
        _distributed_checkpoint_save({"model": {"weight": torch.randn(3, 3)}, "optimizer_0": {}}, folder)
    torch.save({"epoch": 0, "global_step": 1}, folder / _METADATA_FILENAME)
    return folder


def deepspeed_checkpoint(folder: Path) -> Path:
    """The files DeepSpeed's ``save_checkpoint(folder, tag="checkpoint")`` writes for Lightning (ZeRO stage 2)."""
    (folder / "checkpoint").mkdir(parents=True)
    for name in ("checkpoint/mp_rank_00_model_states.pt", "checkpoint/zero_pp_rank_0_mp_rank_00_optim_states.pt",
                 "latest", "zero_to_fp32.py"):  # fmt: skip
        (folder / name).write_bytes(b"x")
    return folder


def test_the_checkpoint_io_removes_sharded_checkpoint_folders_that_hold_nothing_else(tmp_path: Path) -> None:
    """FSDP and DeepSpeed checkpoints are folders: refused as folders, Lightning's top-k kept every one (reviewer)."""
    from audiosep.checkpoint_io import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    fsdp, deepspeed = fsdp_sharded_checkpoint(tmp_path / "epoch=0.ckpt"), deepspeed_checkpoint(tmp_path / "epoch=1.ckpt")
    extra, linked = fsdp_sharded_checkpoint(tmp_path / "epoch=2.ckpt"), deepspeed_checkpoint(tmp_path / "epoch=3.ckpt")
    (extra / "notes.txt").write_text("keep")
    (linked / "checkpoint" / "link.pt").symlink_to(tmp_path / "epoch=2.ckpt" / "notes.txt")
    partial = tmp_path / "epoch=4.ckpt"
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"x")  # shards, no meta.pt: not known to be a checkpoint
    for folder in (fsdp, deepspeed):
        io.remove_checkpoint(folder)
        assert not folder.exists()
    for refused in (extra, linked, partial):
        with pytest.warns(UserWarning, match="not a checkpoint file, nor a sharded checkpoint folder"):
            io.remove_checkpoint(refused)
        assert refused.is_dir()
    assert (extra / "notes.txt").read_text() == "keep"


def test_last_takes_the_newest_of_this_model_and_refuses_its_bad_state_rather_than_an_older_run(tmp_path: Path) -> None:
    """A refused newest last.ckpt was passed over for an older run's, without a word (reviewer)."""
    from audiosep.training_cli import checkpoint_problem, find_last_checkpoint

    good = {"pytorch-lightning_version": "2.6", "state_dict": {"w": torch.zeros(3)}}
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    torch.save(good, tmp_path / "old" / "last.ckpt")
    torch.save(good | {"loops": {"fit_loop": {"epoch_progress": {"total": {"ready": "x"}}}}}, tmp_path / "new" / "last.ckpt")
    os.utime(tmp_path / "old" / "last.ckpt", ns=(1, 1))
    found = find_last_checkpoint(tmp_path, {"w": (3,)})
    assert found == tmp_path / "new" / "last.ckpt"
    assert checkpoint_problem(found, {"w": (3,)}).startswith("its loop progress")


class _Terminal:
    """A stdout that says it is a terminal."""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize(("terminal", "given", "shown"), [(True, [], True), (False, [], False),
                                                          (False, ["--trainer.enable_progress_bar=true"], True)])  # fmt: skip
def test_fit_shows_training_bars_on_a_terminal_unless_told(
    terminal: bool, given: list[str], shown: bool, tiny_librimix: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning's bars go to stdout: redirected into a log they were hundreds of lines of frames."""
    if terminal:
        monkeypatch.setattr(sys, "stdout", _Terminal())
    cli = run_lightning_cli(["--config", RECIPE, f"--data.root={tiny_librimix}",
                             f"--trainer.default_root_dir={tmp_path}", *TINY_MODEL, *given], run=False)  # fmt: skip
    assert (cli.trainer.progress_bar_callback is not None) is shown


def test_checked_last_checkpoint_refuses_what_fit_would_refuse(tiny_librimix: Path, tmp_path: Path) -> None:
    """demo and bench sweep resume the newest last.ckpt of their model: checked as fit --ckpt_path checks it."""
    from audiosep.errors import UserError
    from audiosep.training_cli import checked_last_checkpoint

    cli = run_lightning_cli(["fit", "--config", RECIPE, f"--data.root={tiny_librimix}", f"--trainer.default_root_dir={tmp_path}",
                             "--trainer.max_steps=1", "--trainer.limit_val_batches=1", "--data.batch_size=2",
                             "--trainer.logger=false", "--trainer.enable_progress_bar=false", *TINY_MODEL])  # fmt: skip
    last = checked_last_checkpoint(tmp_path, cli.model, cli.datamodule, "delete it")
    assert last is not None and last.name == "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] = float("nan")
    torch.save(checkpoint, last)
    with pytest.raises(UserError, match=rf"^{last}: .*lr.*; delete it$"):
        checked_last_checkpoint(tmp_path, cli.model, cli.datamodule, "delete it")
    # another run's: same weight shapes, other model settings (fit --ckpt_path refuses it; demo and sweep resumed it)
    checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] = 1e-3
    checkpoint["audiosep_model"]["init_args"]["causal"] = not checkpoint["audiosep_model"]["init_args"]["causal"]
    torch.save(checkpoint, last)
    with pytest.raises(UserError, match=rf"^{last}: it was trained with other settings .*causal"):
        checked_last_checkpoint(tmp_path, cli.model, cli.datamodule, "delete it")
