"""Norm study: train one separator with each norm on the same data, and measure what each buys.

Every run of a study uses the same seed, the same data order (an explicitly seeded loader), the
same step budget and the same optimiser; only ``norm=`` changes. Each run records its validation
SI-SNRi curve, the final SI-SNRi on the whole validation split, the median training step time,
the batch-1 CPU real-time factor of the plain model and of the folded one
(:func:`audiosep.optimize.prepare_for_inference`), whether the norm is causal in training and at
inference, and whether training diverged (a non-finite loss or score). A finished run is kept in
``OUT/runs/`` and skipped when the study runs again, so an interrupted study resumes.

``--minutes M`` is turned into one step budget for every run: the step time of the first norm is
measured once and ``M * 60 / step_time`` steps are used by all (recorded in ``study.json``).

Norms are keyed by their canonical registry name (``gLN`` and ``global_ln`` are one norm, listed
once). A study resumes only under the same settings and the same run conditions: the data's
fingerprint (:func:`data_fingerprint`), the torch thread count, the CPU and the library versions,
since each changes the scores or the timings. A train split too small for one batch is refused
before anything trains; a run that ends short of the step budget without diverging is named under
the table.

``results.csv`` has one row per norm. ``final_per_seed_db`` lists the seeds' final SI-SNRi joined
with ``;``, ``nan`` for a seed that diverged; an empty cell means no value (no seed finished, or no
step was timed). Text cells go through the project's formula guard
(:func:`audiosep.eval_report.csv_formula_guard`), so a cell starting with ``-`` gets a ``'``.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import random
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from audiosep.bench.measure import cpu_name
from audiosep.checkpoint_io import AtomicCheckpointIO, LastCheckpoint, resume_last
from audiosep.errors import UserError, one_line
from audiosep.eval_report import csv_formula_guard
from audiosep.io import LOCK_FILE, TEMP_SUFFIX, atomic_write_text, folder_lock, read_json, source_digest
from audiosep.models import build
from audiosep.nn.norms import (
    PowerNorm,
    UnifiedNorm,
    canonical_norm_name,
    is_causal_in_training,
    is_causal_norm,
)
from audiosep.norm_study_settings import DEFAULT_NORMS, STUDY_PRESETS, StudySettings
from audiosep.tasks.separation import SeparationTask

SCHEMA = "audiosep.norm_study/1"
__all__ = ["DEFAULT_NORMS", "STUDY_PRESETS", "StudySettings", "run_study"]

def check_settings(settings: StudySettings) -> None:
    """Raise :class:`UserError` for names and sizes that cannot work, before anything trains."""
    if not settings.norms:
        raise UserError("--norms is empty")
    canonical: dict[str, list[str]] = {}
    for norm in settings.norms:
        try:
            canonical.setdefault(canonical_norm_name(norm), []).append(norm)
        except ValueError as err:
            raise UserError(f"--norms: {err}") from None
    for name, given in canonical.items():
        if len(given) > 1:
            raise UserError(f"--norms lists a norm twice: {', '.join(given)} (all {name})")
    if (settings.minutes is None) == (settings.steps is None):
        raise UserError("give exactly one of --minutes and --steps")
    if (settings.steps is not None and settings.steps < 1) or (
        settings.minutes is not None and not 0 < settings.minutes < math.inf
    ):
        raise UserError("--steps / --minutes must be positive and finite")
    for name in ("seeds", "batch_size", "evals", "val_mixtures"):
        if getattr(settings, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(settings, name)}")
    for name in ("segment", "lr", "rtf_seconds"):  # nan and inf fail too
        if not 0 < getattr(settings, name) < math.inf:
            raise UserError(f"--{name.replace('_', '-')} must be positive and finite, got {getattr(settings, name)}")
    for name in ("segment", "rtf_seconds"):  # 0.0001 s timed an empty input (RTF 18); 100 s crops, 27 s a step
        if not SECONDS_RANGE[0] <= getattr(settings, name) <= SECONDS_RANGE[1]:
            raise UserError(f"--{name.replace('_', '-')} must be from {SECONDS_RANGE[0]} to {SECONDS_RANGE[1]} s, "
                            f"got {getattr(settings, name)}")  # fmt: skip
    if not 0 <= settings.warmup_fraction <= 1:
        raise UserError(f"--warmup-fraction must be in [0, 1], got {settings.warmup_fraction}")


SECONDS_RANGE = (0.1, 60.0)  # training crops and the RTF input: speech-length, not samples or hours


def build_model(settings: StudySettings, norm: str) -> nn.Module:
    """The study's model with ``norm`` (a registry preset or a :data:`STUDY_PRESETS` entry)."""
    preset, overrides = STUDY_PRESETS.get(settings.model, (settings.model, {}))
    try:
        return build(preset, **(overrides | settings.overrides | {"norm": norm}))
    except (TypeError, ValueError) as err:
        raise UserError(f"--model {settings.model} with norm {norm}: {err}") from None


def set_norm_warmup(model: nn.Module, iterations: int) -> None:
    """Give every UN / PowerNorm layer a warm-up of ``iterations`` (their defaults outlast a short study)."""
    for module in model.modules():
        if isinstance(module, (UnifiedNorm, PowerNorm)):
            module.warmup_iters = iterations


class _StudyTask(SeparationTask):
    """The separation task with the study's Adam learning rate."""

    def __init__(self, model: nn.Module, sample_rate: int, lr: float) -> None:
        super().__init__(model, sample_rate=sample_rate)
        self.lr = lr

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class _StepMonitor(L.Callback):
    """Times every training step and the whole training, keeps the validation curve, stops at the first
    non-finite loss; all of it is saved in the run's checkpoints, so a resumed run reports the whole run."""

    def __init__(self) -> None:
        self.step_times: list[float] = []
        self.curve: list[dict[str, float]] = []
        self.diverged_at: int | None = None
        self._start = 0.0
        self._wall_before = 0.0  # seconds trained before this process resumed the run
        self._fit_start = time.monotonic()

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._fit_start = time.monotonic()

    def wall_s(self) -> float:
        """Training wall time of the run, resumed parts included."""
        return self._wall_before + time.monotonic() - self._fit_start

    def state_dict(self) -> dict[str, Any]:
        return {"step_times": self.step_times, "curve": self.curve, "diverged_at": self.diverged_at,
                "wall_s": self.wall_s()}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The saved state of a run being resumed (checked before the resume: :func:`monitor_state_problem`)."""
        self.step_times, self.curve, self.diverged_at, self._wall_before = _parse_monitor_state(state_dict, math.inf)

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.diverged_at is not None:  # a diverged run killed while it was scored: nothing more to train
            trainer.should_stop = True

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, *args: Any) -> None:
        self.step_times.append(time.perf_counter() - self._start)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        # SeparationTask skips a non-finite step and returns no loss: for the study that is divergence
        if self.diverged_at is None and (loss is None or not bool(torch.isfinite(loss.detach()).all())):
            self.diverged_at = trainer.global_step
            trainer.should_stop = True

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get("val_si_snri")
        if value is not None and not trainer.sanity_checking:
            self.curve.append({"step": trainer.global_step, "val_si_snri": round(float(value), 4)})


MonitorState = tuple[list[float], list[dict[str, float]], int | None, float]


def _parse_monitor_state(state: Any, steps: float) -> MonitorState:
    """``(step_times, curve, diverged_at, wall_s)`` of a saved :class:`_StepMonitor` state of a run of ``steps``
    steps. Raises ``ValueError`` naming what is wrong."""
    try:
        step_times = [float(t) for t in state["step_times"]]
        curve = [{"step": int(p["step"]), "val_si_snri": float(p["val_si_snri"])} for p in state["curve"]]
        diverged_at = None if state["diverged_at"] is None else int(state["diverged_at"])
        wall_s = float(state["wall_s"])
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"its progress record is not the study's ({one_line(err)})") from None
    if not (math.isfinite(wall_s) and wall_s >= 0 and all(math.isfinite(t) and t >= 0 for t in step_times)):
        raise ValueError("its progress record holds negative or non-finite times")
    if len(step_times) > steps or not all(0 <= p["step"] <= steps for p in curve):
        raise ValueError(f"its progress record holds more than the run's {steps:g} steps")
    if diverged_at is not None and not 0 <= diverged_at <= steps:
        raise ValueError(f"its progress record says the run diverged at step {diverged_at}, outside 0..{steps:g}")
    return step_times, curve, diverged_at, wall_s


def monitor_state_problem(checkpoint: dict[str, Any], steps: int) -> str | None:
    """Why a loaded run checkpoint holds no valid progress record of a run of ``steps`` steps (a damaged or crafted
    file; one without it resumed with the curve and times of its resumed part only: diff review)."""
    state = checkpoint.get("callbacks", {}).get(_StepMonitor.__qualname__)
    if state is None:
        return "it holds no progress record of a norm study run"
    try:
        _parse_monitor_state(state, steps)
    except ValueError as err:
        return str(err)
    return None


@dataclass
class StudyData:
    """The loaders every run shares (the train order is re-seeded for each run)."""

    train: Any
    val_subset: Any
    val_full: Any
    sample_rate: int
    collate: Callable
    base: Path  # the LibriMix folder read (``.../wav8k/min``)

    def train_loader(self, seed: int, batch_size: int) -> DataLoader:
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(self.train, batch_size, shuffle=True, drop_last=True, generator=generator,
                          collate_fn=self.collate)  # fmt: skip

    def val_loader(self, full: bool) -> DataLoader:
        return DataLoader(self.val_full if full else self.val_subset, 1, collate_fn=self.collate)


def load_data(settings: StudySettings) -> StudyData:
    """The demo (or any LibriMix-shaped) set: random train crops, the first validation mixtures."""
    from audiosep.data.librimix import LibriMixDataModule, collate_padded, resolve_librimix_dir

    module = LibriMixDataModule(settings.data, train_split="train-100", segment=settings.segment, num_workers=0)
    train = module.split_dataset(module.train_split, settings.segment)  # UserError names the missing file
    dev = module.split_dataset("dev", None)
    subset = Subset(dev, range(min(settings.val_mixtures, len(dev))))
    base = resolve_librimix_dir(module.root, module.n_src, module.sample_rate, module.mode).resolve()
    return StudyData(train, subset, dev, module.sample_rate, collate_padded, base)


def check_data(settings: StudySettings, data: StudyData) -> None:
    """Refuse splits the study cannot use, before anything trains: a run of 0 steps would look trained."""
    if len(data.train) < settings.batch_size:  # the train loader drops the last incomplete batch
        raise UserError(f"{data.base / 'train-100'}: {len(data.train)} mixtures, fewer than --batch-size "
                        f"{settings.batch_size}: not one training batch; give a smaller --batch-size")  # fmt: skip
    if len(data.val_full) == 0:
        raise UserError(f"{data.base / 'dev'}: no mixtures to validate on")


FINGERPRINT_BYTES = 4096


def _file_fingerprint(path: Path) -> bytes:
    """Size and first and last :data:`FINGERPRINT_BYTES` of one file: two small reads however big it is."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(0)
            head = handle.read(FINGERPRINT_BYTES)
            handle.seek(max(len(head), size - FINGERPRINT_BYTES))
            tail = handle.read(FINGERPRINT_BYTES)
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None
    return size.to_bytes(8, "little") + head + tail


def data_fingerprint(data: StudyData) -> str:
    """SHA-256 over every file the study reads, in order: its path below the data folder, size, head and tail.

    Why: a resumed study must not compare runs on other data (a folder regenerated in place with
    another seed, other mixtures or another order). Reading 8 KiB a file keeps this cheap on a full
    LibriMix; an edit confined to the middle of a file that keeps its size is not seen.
    """
    digest = hashlib.sha256()
    for dataset in (data.train, data.val_full):
        folders = [dataset.mixture_folder, *(f"s{i + 1}" for i in range(dataset.n_src))]
        for mixture_id in dataset.ids:
            for folder in folders:
                name = f"{dataset.split_dir.name}/{folder}/{mixture_id}.wav"
                digest.update(name.encode() + b"\0" + _file_fingerprint(dataset.split_dir / folder / f"{mixture_id}.wav"))
    return digest.hexdigest()


def run_conditions(data: StudyData) -> dict[str, Any]:
    """What changes a run's numbers besides the settings: the data, the thread count, the CPU, the versions."""
    import audiosep

    return {"data_fingerprint": data_fingerprint(data), "threads": torch.get_num_threads(), "cpu": cpu_name(),
            "torch": torch.__version__, "audiosep": audiosep.__version__,
            "audiosep_code": source_digest()}  # an editable install keeps its version through edits (reviewer)  # fmt: skip


def _seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def calibrate_steps(settings: StudySettings, data: StudyData) -> tuple[int, float]:
    """``(steps, seconds per step)``: the budget that fits ``settings.minutes`` for the first norm."""
    _seed(0)
    model = build_model(settings, settings.norms[0]).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    from audiosep.losses import PITSISNRLoss

    loss_fn, times = PITSISNRLoss(), []
    loader = data.train_loader(0, settings.batch_size)  # not empty: check_data refused that before
    batches = (batch for _ in range(13) for batch in loader)  # a split of few batches is walked again
    for mixture, sources, _ in itertools.islice(batches, 13):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss_fn(model(mixture), sources).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    step_time = statistics.median(times[3:])
    return max(1, int(settings.minutes * 60 / step_time)), step_time


@torch.inference_mode()
def mean_si_snri(model: nn.Module, loader: DataLoader) -> float:
    """Mean SI-SNRi (dB) of the eval-mode ``model`` over ``loader``."""
    from audiosep.metrics import separation_scores

    model.eval()
    values = [float(separation_scores(model(mix), sources, mix).si_snri.mean()) for mix, sources, _ in loader]
    return statistics.fmean(values)


@torch.inference_mode()
def real_time_factors(model: nn.Module, sample_rate: int, seconds: float, rounds: int = 7) -> dict[str, float]:
    """Batch-1 CPU RTF (median latency / audio seconds) of the plain and the folded model, interleaved."""
    from audiosep.bench.measure import time_interleaved, warm_up
    from audiosep.optimize import prepare_for_inference

    plain = model.cpu().eval()
    folded = prepare_for_inference(plain)
    mixture = 0.1 * torch.randn(1, int(seconds * sample_rate), generator=torch.Generator().manual_seed(0))
    device = torch.device("cpu")
    for fn in (plain, folded):
        warm_up(fn, (mixture,), device)
    timing = time_interleaved({"plain": lambda: plain(mixture), "folded": lambda: folded(mixture)}, rounds, device)
    return {key: value.median / seconds for key, value in timing.items()}


def train_run(
    settings: StudySettings, data: StudyData, norm: str, seed: int, steps: int, checkpoints: Path
) -> dict[str, Any]:
    """Train one (norm, seed) run for ``steps`` steps and measure it; returns its result record.

    The run saves ``checkpoints/last.ckpt`` every :data:`~audiosep.checkpoint_io.LAST_EVERY_STEPS` steps and goes
    on from it when the study is run again after an interruption (its batches from there are drawn afresh, so
    a resumed run is another draw of the same run, not a replay).
    """
    L.seed_everything(seed, verbose=False)
    model = build_model(settings, norm)
    set_norm_warmup(model, int(settings.warmup_fraction * steps))
    task = _StudyTask(model, data.sample_rate, settings.lr)
    monitor = _StepMonitor()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, gradient_clip_val=5.0,
        val_check_interval=max(1, steps // settings.evals), check_val_every_n_epoch=None,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=settings.progress and sys.stdout.isatty(),  # bars go to stdout
        callbacks=[monitor, LastCheckpoint(checkpoints / "last.ckpt")], default_root_dir=str(checkpoints),
    )  # fmt: skip
    trainer.strategy.checkpoint_io = AtomicCheckpointIO()  # a kill mid-save never leaves half a last.ckpt
    resume = resume_last(checkpoints, task, functools.partial(monitor_state_problem, steps=steps),
                         f"delete {checkpoints} to train the run from its start")  # fmt: skip
    _seed(seed)  # the crops and the order no longer depend on what building the model consumed
    with warnings.catch_warnings():  # a resumed run's fresh draw of batches is the documented behaviour here
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
        trainer.fit(task, train_dataloaders=data.train_loader(seed, settings.batch_size),
                    val_dataloaders=data.val_loader(full=False), ckpt_path=resume)  # fmt: skip
    wall = monitor.wall_s()
    final = mean_si_snri(model, data.val_loader(full=True)) if monitor.diverged_at is None else float("nan")
    diverged = monitor.diverged_at is not None or not math.isfinite(final)
    rtf = real_time_factors(model, data.sample_rate, settings.rtf_seconds)
    return {
        "norm": norm, "canonical_norm": canonical_norm_name(norm), "seed": seed, "steps": trainer.global_step,
        "final_si_snri_db": None if diverged else round(final, 4),
        "best_curve_si_snri_db": max((p["val_si_snri"] for p in monitor.curve if math.isfinite(p["val_si_snri"])),
                                     default=None),  # fmt: skip
        "curve": monitor.curve,
        "step_time_s": statistics.median(monitor.step_times) if monitor.step_times else None,
        "train_wall_s": round(wall, 1),
        "rtf_plain": rtf["plain"], "rtf_folded": rtf["folded"], "folded_speedup": rtf["plain"] / rtf["folded"],
        "causal_in_training": is_causal_in_training(norm), "causal_at_inference": is_causal_norm(norm),
        "diverged": diverged, "diverged_at_step": monitor.diverged_at,
        "params": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads(),
    }  # fmt: skip


def _check_conditions(path: Path, kept: Any, now: dict[str, Any]) -> None:
    """Raise a one-line :class:`UserError` naming the first run condition of ``path`` that differs from ``now``."""
    kept = kept if isinstance(kept, dict) else {}
    for key, value in now.items():
        if kept.get(key) == value:
            continue
        if key not in kept:
            raise UserError(f"{path}: this study records no {key} (an older study); use another --out")
        if key == "threads":
            raise UserError(f"{path}: this study ran with {kept[key]} threads, not {value}; "
                            f"give --threads {kept[key]} or use another --out")  # fmt: skip
        if key == "audiosep_code":
            raise UserError(f"{path}: this study's runs were trained by other audiosep code (its sources changed "
                            "since: an edit or an update); use another --out")  # fmt: skip
        if key == "data_fingerprint":
            raise UserError(f"{path}: this study was trained on other data (the files under the data folder "
                            "changed since); use another --out")  # fmt: skip
        raise UserError(f"{path}: this study ran with {key} {kept[key]!r}, not {value!r}; use another --out")


def _study_state(settings: StudySettings, data: StudyData, out: Path, conditions: dict[str, Any]) -> dict[str, Any]:
    """The study's fixed settings, run conditions and step budget: read back on a restart, written once otherwise."""
    path = out / "study.json"
    if path.exists():
        state = _read_json_object(path)
        if state.get("settings") != settings.fingerprint():
            raise UserError(f"{path}: this folder holds a study with other settings; use another --out")
        if settings.steps is not None and settings.steps != state["steps"]:
            raise UserError(f"{path}: this study runs {state['steps']} steps, not --steps {settings.steps}")
        if settings.steps is None and state.get("minutes") != settings.minutes:
            raise UserError(f"{path}: this study was sized for --minutes {state.get('minutes')}, not {settings.minutes}; "
                            "use another --out")  # fmt: skip
        _check_conditions(path, state.get("conditions"), conditions)
        return state
    others = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE and not p.name.endswith(TEMP_SUFFIX))
    if others:  # a folder of the user's: the study's results.csv, table.md, ... would replace theirs
        raise UserError(f"--out {out}: exists and is not a norm study's folder (it holds {others[0]!r} and no "
                        "study.json); use another --out")  # fmt: skip
    if settings.steps is not None:
        steps, step_time = settings.steps, None
    else:
        steps, step_time = calibrate_steps(settings, data)
    state = {"schema": SCHEMA, "settings": settings.fingerprint(), "conditions": conditions, "steps": steps,
             "calibration_step_time_s": step_time, "minutes": settings.minutes}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(state, indent=2))
    return state


def _read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object this study wrote earlier; anything else is a one-line :class:`UserError`."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise UserError(f"{path}: unreadable, or not a JSON object; use another --out")
    return value


def _kept_run(path: Path, study: dict[str, Any]) -> dict[str, Any]:
    """A finished run's record, refused unless it was trained under this study's settings and steps.

    Why: ``study.json`` alone guards the folder; a run file left from another study (its
    ``study.json`` deleted or replaced) would otherwise be reported under these settings.
    """
    record = _read_json_object(path)
    if record.get("study") != study:
        raise UserError(f"{path}: this run was trained with other settings or steps; use another --out")
    return record


def run_study(settings: StudySettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) every (norm, seed) run, then write the table, CSV, JSON and plot."""
    check_settings(settings)
    if Path(settings.out).exists() and not Path(settings.out).is_dir():
        raise UserError(f"--out {settings.out}: exists and is not a folder")
    for norm in settings.norms:  # a norm the model refuses fails now, not after hours of training
        build_model(settings, norm)
    out = Path(settings.out)
    data = load_data(settings)
    check_data(settings, data)
    conditions = run_conditions(data)
    with folder_lock(out, "--out"):  # a second study there would train and write the same runs
        return _run_locked(settings, data, out, conditions, log)


def _run_locked(settings: StudySettings, data: StudyData, out: Path, conditions: dict[str, Any],
                log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """:func:`run_study` in its locked ``out`` folder."""
    state = _study_state(settings, data, out, conditions)
    steps = state["steps"]
    log(f"norm study: {settings.model}, {steps} steps per run, norms {', '.join(settings.norms)}")
    study = {"settings": settings.fingerprint(), "conditions": conditions, "steps": steps}
    runs: list[dict[str, Any]] = []
    for norm in settings.norms:
        for seed in settings.seeds_of(norm):
            path = out / "runs" / f"{canonical_norm_name(norm)}-seed{seed}.json"
            checkpoints = path.with_suffix("")  # runs/<norm>-seed<k>/last.ckpt while the run trains
            if path.exists():
                runs.append(_kept_run(path, study))
                log(f"{norm} seed {seed}: finished earlier, kept ({path})")
                if checkpoints.exists():  # a kill came between the record and the folder's removal
                    shutil.rmtree(checkpoints)
                continue
            resumed = (checkpoints / "last.ckpt").is_file()
            log(f"{norm} seed {seed}: " + (f"resuming from {checkpoints / 'last.ckpt'}" if resumed
                                           else f"training {steps} steps"))  # fmt: skip
            record = train_run(settings, data, norm, seed, steps, checkpoints) | {"study": study}
            if record["steps"] != steps and not record["diverged"]:
                log(f"{norm} seed {seed}: warning: trained {record['steps']} of {steps} steps without diverging")
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(strict_json(record), indent=2, allow_nan=False))
            if checkpoints.exists():
                shutil.rmtree(checkpoints)  # the record holds the run now
            runs.append(record)
    labels = {canonical_norm_name(norm): norm for norm in settings.norms}
    report = {"schema": SCHEMA, "model": settings.model, "steps": steps, "settings": asdict(settings),
              "conditions": conditions, "rows": summary_rows(runs, labels), "runs": runs}  # fmt: skip
    write_outputs(report, out)
    return report


def summary_rows(runs: Sequence[dict[str, Any]], labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per canonical norm: final SI-SNRi per seed and mean, steps, step time, RTFs, causality, divergence.

    Rows are keyed by the canonical registry name (an alias is the same norm, never a second row)
    and labelled by ``labels[canonical]`` (the name given on the command line), else by the first run's name.
    """
    def key(run: dict[str, Any]) -> str:
        return run.get("canonical_norm") or canonical_norm_name(run["norm"])

    rows = []
    for canonical in dict.fromkeys(key(run) for run in runs):
        mine = [run for run in runs if key(run) == canonical]
        finals = [run["final_si_snri_db"] for run in mine if run["final_si_snri_db"] is not None]
        rows.append({
            "norm": (labels or {}).get(canonical, mine[0]["norm"]), "seeds": len(mine),
            "final_si_snri_db": round(statistics.fmean(finals), 2) if finals else None,
            "final_per_seed_db": [run["final_si_snri_db"] for run in mine],
            "step_time_ms": round(1000 * statistics.median(r["step_time_s"] for r in mine if r["step_time_s"]), 1)
            if any(r["step_time_s"] for r in mine) else None,
            "rtf_plain": round(statistics.median(r["rtf_plain"] for r in mine), 4),
            "rtf_folded": round(statistics.median(r["rtf_folded"] for r in mine), 4),
            "folded_speedup": round(statistics.median(r["folded_speedup"] for r in mine), 2),
            "causal_in_training": mine[0]["causal_in_training"], "causal_at_inference": mine[0]["causal_at_inference"],
            "diverged": sum(bool(r["diverged"]) for r in mine),
            "steps_per_seed": [r["steps"] for r in mine], "canonical_norm": canonical,
        })  # fmt: skip
    return rows


TABLE_FIELDS = ("norm", "seeds", "final_si_snri_db", "final_per_seed_db", "step_time_ms", "rtf_plain", "rtf_folded",
                "folded_speedup", "causal_in_training", "causal_at_inference", "diverged", "steps_per_seed",
                "canonical_norm")  # fmt: skip


def short_runs(report: dict[str, Any]) -> list[str]:
    """``"NORM seed S trained N of M steps"`` for every run that ended short of the budget without diverging.

    Why: such a run (a loader that ran dry, a stop from outside) is not the study's comparison and
    must not be read as one.
    """
    return [f"{run['norm']} seed {run['seed']} trained {run['steps']} of {report['steps']} steps"
            for run in report["runs"] if run["steps"] != report["steps"] and not run["diverged"]]  # fmt: skip


def format_table(report: dict[str, Any]) -> str:
    """The summary as a markdown table."""
    header = ["norm", "seeds", "final val SI-SNRi (dB)", "per seed", "train step (ms)", "RTF plain",
              "RTF folded", "folded speed-up", "causal train/infer", "diverged"]  # fmt: skip
    lines = [f"Norm study: {report['model']}, {report['steps']} steps per run", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip

    def yes(value: bool) -> str:
        return "yes" if value else "no"

    for row in report["rows"]:
        per_seed = ", ".join("-" if v is None else f"{v:.2f}" for v in row["final_per_seed_db"])
        final = "-" if row["final_si_snri_db"] is None else f"{row['final_si_snri_db']:.2f}"
        step_ms = "-" if row["step_time_ms"] is None else str(row["step_time_ms"])
        cells = [row["norm"], str(row["seeds"]), final, per_seed, step_ms,
                 f"{row['rtf_plain']:.4f}", f"{row['rtf_folded']:.4f}", f"{row['folded_speedup']:.2f}x",
                 f"{yes(row['causal_in_training'])}/{yes(row['causal_at_inference'])}",
                 f"{row['diverged']}/{row['seeds']}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    short = short_runs(report)
    if short:
        lines += ["", f"**Not comparable: {'; '.join(short)}** (stopped early without diverging)."]
    return "\n".join(lines) + "\n"


def plot_curves(report: dict[str, Any], path: Path) -> None:
    """Validation SI-SNRi against training step, one line per (norm, seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    for run in report["runs"]:
        if run["curve"]:
            steps = [point["step"] for point in run["curve"]]
            values = [point["val_si_snri"] for point in run["curve"]]
            axis.plot(steps, values, marker="o", markersize=3, label=f"{run['norm']} (seed {run['seed']})")
    axis.set_xlabel("training step")
    axis.set_ylabel("validation SI-SNRi (dB)")
    axis.set_title(f"{report['model']}: validation SI-SNRi per norm")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()

    def save(name: str) -> None:
        figure.savefig(name, dpi=120, format="png")

    from audiosep.io import atomic_write

    atomic_write(path, save)
    plt.close(figure)


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    """One summary row as CSV cells: lists joined by ``;`` (a diverged seed is ``nan``), ``None`` empty, text guarded."""

    def cell(value: Any) -> Any:
        if isinstance(value, list):
            return ";".join("nan" if v is None else str(v) for v in value)
        return "" if value is None else value

    return {key: csv_formula_guard(cell(row[key])) for key in TABLE_FIELDS}


def results_csv(report: dict[str, Any]) -> str:
    """``results.csv``: one row per norm (see the module docstring for the cells' meaning)."""
    from audiosep.eval_report import guarded_csv

    return guarded_csv((_csv_row(row) for row in report["rows"]), TABLE_FIELDS)


def write_outputs(report: dict[str, Any], out: Path) -> list[Path]:
    """``table.md``, ``results.json``, ``results.csv`` and ``curves.png`` in ``out``."""
    paths = [
        atomic_write_text(out / "table.md", format_table(report)),
        atomic_write_text(out / "results.json", json.dumps(strict_json(report), indent=2, default=_plain, allow_nan=False)),
        atomic_write_text(out / "results.csv", results_csv(report)),
    ]
    plot_curves(report, out / "curves.png")
    return [*paths, out / "curves.png"]


def strict_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float as None: JSON has no NaN (Python writes it, strict parsers
    refuse the file), and a diverged run's validation points are NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item) for item in value]
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")
