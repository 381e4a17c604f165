"""SepPrune end to end: score channels, remove them under a MACs budget, fine-tune, measure.

``method="sepprune"`` learns the scores with :class:`~audiosep.pruning.task.ChannelGateTask`
(weights frozen) and keeps the best channels across all layers; ``l1`` and ``random`` are the
baselines: one keep ratio for every layer, channels ranked by weight magnitude or at random.
All three then fine-tune the same way (Lightning, Adam 1e-3, the normal
:class:`~audiosep.tasks.separation.SeparationTask`). Every Lightning phase writes checkpoints in
``work_dir`` and resumes from them when the same command runs again: the folder records what they
belong to (:mod:`audiosep.pruning.identity`), and a folder of another run is refused.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch import nn

from audiosep.checkpoint_io import AtomicCheckpointIO, LastCheckpoint, resume_last
from audiosep.data.identity import as_json, data_identity, librimix_metadata_csvs
from audiosep.errors import UserError
from audiosep.io import LOCK_FILE, atomic_write_text, folder_lock, read_json, source_digest
from audiosep.pruning.gates import ChannelGates
from audiosep.pruning.groups import ChannelGroup, find_groups, total_macs
from audiosep.pruning.identity import model_identity
from audiosep.pruning.latency import measure_latency_spread
from audiosep.pruning.surgery import (
    Keep,
    l1_scores,
    pruned_macs,
    random_scores,
    remove_channels,
    select_by_score,
    select_uniform,
)
from audiosep.pruning.task import ChannelGateTask

Method = Literal["sepprune", "l1", "random"]
METHODS: tuple[str, ...] = ("sepprune", "l1", "random")


WORK_RECORD = "run.json"  # in the work folder: the weights and settings its checkpoints belong to


@dataclass
class PruneSettings:
    """What to prune and how long to train (SepPrune's defaults where they are known)."""

    method: Method = "sepprune"
    target_macs: float = 0.5
    threshold: float = 0.7
    search_steps: int = 300
    search_lr: float = 0.1
    budget_weight: float = 20.0
    finetune_epochs: float = 1.0
    multiple: int = 8  # widths a multiple of 8: odd widths are slow (measured: 1.18x vs 1.32x at 50 % MACs)
    seed: int = 0
    accelerator: str = "auto"
    recipe_sha256: str | None = None  # digest of the recipe file's bytes (resume is only right on the same recipe)


@dataclass
class PruneReport:
    """Cost and quality before and after pruning, for the final table and JSON."""

    method: str
    seed: int
    params_before: int
    params_after: int
    macs_before: float
    macs_after: float
    widths: list[int]
    si_snri_before: float | None = None
    si_snri_pruned: float | None = None
    si_snri_after: float | None = None
    latency_before_s: float | None = None  # medians
    latency_after_s: float | None = None
    latency_spread_s: dict[str, dict[str, float]] = field(default_factory=dict)  # min, q1, median, q3, max per model
    si_snri_split: str = "dev"  # the split of si_snri_*: also the one fine-tuning picks its best checkpoint on
    si_snri_test_before: float | None = None  # held-out test split (when the data has one)
    si_snri_test_after: float | None = None  # the model written: fine-tuned, or right after surgery
    search_steps: int | None = None  # gate-training steps done (sepprune)
    finetune_steps: int | None = None  # fine-tuning steps done
    train_batches_per_epoch: int | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def score_channels(
    model: nn.Module,
    groups: list[ChannelGroup],
    macs: float,
    settings: PruneSettings,
    datamodule: L.LightningDataModule | None,
    work_dir: Path,
) -> tuple[dict[str, torch.Tensor], int | None]:
    """Per-channel scores by ``settings.method`` (higher = keep), and the search steps done (sepprune).

    The search runs ``settings.search_steps`` steps, over several epochs when an epoch is shorter.
    """
    if settings.method == "l1":
        return l1_scores(model, groups), None
    if settings.method == "random":
        return random_scores(groups, settings.seed), None
    if datamodule is None:
        raise ValueError("sepprune learns its scores on data: give a datamodule")
    gates = ChannelGates(groups, threshold=settings.threshold)
    task = ChannelGateTask(model, gates, macs, settings.target_macs, settings.budget_weight, settings.search_lr)
    trainer = _trainer(work_dir / "search", settings, max_steps=settings.search_steps)
    trainer.fit(task, datamodule=datamodule, ckpt_path=resume_last(work_dir / "search", task))
    gates.detach()
    return {g.name: gates.score(g).detach().clone() for g in groups}, trainer.global_step


def select_channels(
    groups: list[ChannelGroup], scores: dict[str, torch.Tensor], macs: float, settings: PruneSettings
) -> Keep:
    """SepPrune allocates across layers by learned score; the baselines keep one ratio per layer."""
    select = select_by_score if settings.method == "sepprune" else select_uniform
    return select(groups, scores, macs, settings.target_macs, settings.multiple)


def finetune(
    model: nn.Module, settings: PruneSettings, datamodule: L.LightningDataModule, work_dir: Path, sample_rate: int
) -> tuple[nn.Module, int]:
    """Fine-tune the pruned model with the normal separation task; the best-validation weights and the steps done."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from audiosep.tasks.separation import SeparationTask

    task = SeparationTask(model, sample_rate=sample_rate)  # Adam at 1e-3, as SepPrune fine-tunes
    best = ModelCheckpoint(dirpath=work_dir / "finetune", monitor="val_si_snri", mode="max", save_last=True)
    steps = _epochs_to_steps(settings.finetune_epochs, datamodule)
    trainer = _trainer(work_dir / "finetune", settings, max_steps=steps, callbacks=[best])
    trainer.fit(task, datamodule=datamodule, ckpt_path=resume_last(work_dir / "finetune", task))
    if best.best_model_path:
        path = own_checkpoint(best.best_model_path, work_dir / "finetune")
        task.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    return task.model.eval(), trainer.global_step


def own_checkpoint(recorded: str | Path, folder: Path) -> Path:
    """The file of that name in ``folder``, the run's own: a resumed ModelCheckpoint reloads the absolute best path
    its state recorded, which in a moved or copied work folder names the old folder (where another run may have
    written since: its weights came back under this run's settings).

    Raises:
        UserError: ``folder`` holds no file of that name.
    """
    path = folder / Path(recorded).name
    if not path.is_file():
        raise UserError(f"{folder}: the best checkpoint {Path(recorded).name} is missing from this run's folder")
    return path


def _epochs_to_steps(epochs: float, datamodule: L.LightningDataModule) -> int:
    """Fine-tuning steps for ``epochs`` (at least one; :func:`check_inputs` refused a split without a batch)."""
    datamodule.setup("fit")
    return max(1, round(epochs * len(datamodule.train_dataloader())))


def train_batches(datamodule: L.LightningDataModule) -> int | None:
    """Training batches per epoch of a fixed LibriMix split (``drop_last``), read without building the loader.

    Why not ``len(train_dataloader())``: that call fixes the data module's shuffling seed, before
    ``seed_everything``. ``None`` for dynamic mixing and other data modules (not known up front).
    """
    from audiosep.data.librimix import LibriMixDataModule

    if not isinstance(datamodule, LibriMixDataModule) or datamodule.dynamic_mixing:
        return None
    return len(datamodule.split_dataset(datamodule.train_split, datamodule.segment)) // datamodule.batch_size


def _trainer(root: Path, settings: PruneSettings, **kwargs) -> L.Trainer:
    """A Lightning trainer checkpointing to ``root`` atomically (a kill mid-save never leaves a half ``last.ckpt``)."""
    defaults = dict(
        default_root_dir=str(root), accelerator=settings.accelerator, devices=1, gradient_clip_val=5.0,
        logger=False, enable_model_summary=False, val_check_interval=0.5, max_epochs=-1,
        enable_checkpointing="callbacks" in kwargs,
        enable_progress_bar=sys.stdout.isatty(),  # Lightning's bars go to stdout: not into a redirected report
    )  # fmt: skip
    if "callbacks" not in kwargs:  # saves by itself: Lightning's own ModelCheckpoint would add a file of its own
        kwargs["callbacks"] = [LastCheckpoint(root / "last.ckpt")]
    trainer = L.Trainer(**(defaults | kwargs))
    trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    return trainer


@torch.inference_mode()
def si_snri_on(model: nn.Module, loader: torch.utils.data.DataLoader) -> float:
    """Mean SI-SNRi (dB) of ``model`` over ``loader``'s (mixture, sources, ids) batches, in eval mode on CPU."""
    from audiosep.metrics import separation_scores

    model = model.cpu().eval()
    values = [float(separation_scores(model(mixture), sources, mixture).si_snri.mean()) for mixture, sources, _ in loader]
    return statistics.fmean(values)


def validation_si_snri(model: nn.Module, datamodule: L.LightningDataModule) -> float:
    """Mean SI-SNRi (dB) of ``model`` over the validation split (the one fine-tuning selects on)."""
    datamodule.setup("validate")
    return si_snri_on(model, datamodule.val_dataloader())


def has_test_split(datamodule: L.LightningDataModule) -> bool:
    """Whether ``datamodule`` has a held-out test split (a LibriMix ``test`` metadata CSV)."""
    from audiosep.data.librimix import LibriMixDataModule

    return isinstance(datamodule, LibriMixDataModule) and librimix_metadata_csvs(datamodule)["test"].is_file()


def test_si_snri(model: nn.Module, datamodule: L.LightningDataModule) -> float:
    """Mean SI-SNRi (dB) of ``model`` over the test split: never seen by the search or the checkpoint choice."""
    datamodule.setup("test")
    return si_snri_on(model, datamodule.test_dataloader())


def model_sources(model: nn.Module) -> int | None:
    """The number of sources ``model`` separates, if it says."""
    count = getattr(model, "num_sources", None)
    if count is None:
        count = (getattr(model, "init_args", None) or {}).get("num_sources")
    return count if isinstance(count, int) else None


def check_inputs(
    model: nn.Module,
    sample_rate: int,
    settings: PruneSettings,
    datamodule: L.LightningDataModule | None,
    model_name: str = "the model",
    data_name: str = "the data",
) -> tuple[list[ChannelGroup], int | None]:
    """The model's prunable groups and the train batches per epoch (None: no data, or not known up front),
    after one-line errors for a model and data that do not fit together.

    Checked before the work folder is claimed: sources and sample rate match, the dev split reads,
    and a run that trains gets at least one training batch per epoch.

    Raises:
        TypeError: no pruning rule for this model (from :func:`find_groups`).
        UserError: any other mismatch, naming ``model_name`` or ``data_name`` (or the file at fault).
    """
    groups = find_groups(model, sample_rate)
    if datamodule is None:
        return groups, None
    sources, data_sources = model_sources(model), getattr(datamodule, "n_src", None)
    if sources is not None and data_sources is not None and sources != data_sources:
        raise UserError(f"{model_name}: separates {sources} sources, but {data_name} has n_src {data_sources}")
    data_rate = getattr(datamodule, "sample_rate", None)
    if data_rate is not None and data_rate != sample_rate:
        raise UserError(f"{model_name}: sample rate {sample_rate} Hz, but {data_name} is at {data_rate} Hz")
    datamodule.setup("validate")
    datamodule.val_dataloader()  # reads the dev metadata (a wrong root fails here, not after the claim)
    batches = train_batches(datamodule)
    if batches == 0 and (settings.method == "sepprune" or settings.finetune_epochs > 0):
        raise UserError(
            f"{data_name}: the train split {datamodule.train_split} holds fewer mixtures than batch_size "
            f"{datamodule.batch_size}: no training batch (lower batch_size or use a larger split)"
        )
    return groups, batches


def prune_model(
    model: nn.Module,
    sample_rate: int,
    settings: PruneSettings,
    datamodule: L.LightningDataModule | None,
    work_dir: Path,
    latency_seconds: float = 4.0,
    model_name: str = "the model",
    data_name: str = "the data",
) -> tuple[nn.Module, PruneReport]:
    """Score, select, remove and (when ``finetune_epochs > 0``) fine-tune; report every figure.

    The inputs are checked first (:func:`check_inputs`, its errors naming ``model_name`` and ``data_name``),
    before the work folder is claimed. The SI-SNRi figures are on the dev split, which fine-tuning also
    picks its best checkpoint on; when the data has a test split, the unpruned and final models are scored on it too.
    """
    L.seed_everything(settings.seed, verbose=False)
    model = model.cpu().eval()
    groups, batches = check_inputs(model, sample_rate, settings, datamodule, model_name, data_name)  # before the claim
    with folder_lock(work_dir, "--work-dir"):  # a second pruning there would resume from the same checkpoints
        claim_work_dir(work_dir, run_identity(model, sample_rate, settings, datamodule))
        return _prune_claimed(model, sample_rate, settings, datamodule, work_dir, latency_seconds, groups, batches)


def _prune_claimed(model: nn.Module, sample_rate: int, settings: PruneSettings, datamodule: L.LightningDataModule | None,
                   work_dir: Path, latency_seconds: float, groups: list[ChannelGroup], batches: int | None) -> tuple[nn.Module, PruneReport]:  # fmt: skip
    """:func:`prune_model` after its checks, in its locked and claimed ``work_dir``."""
    macs = total_macs(model, sample_rate)
    scores, search_steps = score_channels(model, groups, macs, settings, datamodule, work_dir)
    keep = select_channels(groups, scores, macs, settings)
    pruned = remove_channels(model, groups, keep).eval()
    report = PruneReport(
        method=settings.method, seed=settings.seed,
        params_before=_params(model), params_after=_params(pruned),
        macs_before=macs, macs_after=pruned_macs(groups, keep, macs),
        widths=[len(keep[g.name]) for g in groups], search_steps=search_steps,
    )  # fmt: skip
    report.extra["macs_after_counted"] = total_macs(pruned, sample_rate)
    if datamodule is not None:
        report.train_batches_per_epoch = batches
        report.si_snri_before = validation_si_snri(model, datamodule)
        report.si_snri_pruned = validation_si_snri(pruned, datamodule)
        if settings.finetune_epochs > 0:
            pruned, report.finetune_steps = finetune(pruned, settings, datamodule, work_dir, sample_rate)
            report.si_snri_after = validation_si_snri(pruned, datamodule)
        if has_test_split(datamodule):
            report.si_snri_test_before = test_si_snri(model, datamodule)
            report.si_snri_test_after = test_si_snri(pruned, datamodule)
    if latency_seconds > 0:
        latency = measure_latency_spread({"before": model, "after": pruned}, latency_seconds, sample_rate)
        report.latency_spread_s = latency
        report.latency_before_s, report.latency_after_s = latency["before"]["median"], latency["after"]["median"]
    return pruned.eval(), report


def run_identity(
    model: nn.Module, sample_rate: int, settings: PruneSettings, datamodule: L.LightningDataModule | None = None
) -> dict[str, object]:
    """What a resumed phase must share with this run: the model (class, arguments, weights), settings, data and
    audiosep's code (a digest of its sources: an editable install keeps its version through edits)."""
    settings_record = {key: value for key, value in asdict(settings).items() if key != "accelerator"}
    return as_json({
        "model": model_identity(model), "sample_rate": sample_rate, "settings": settings_record,
        "data": data_identity(datamodule), "audiosep_code": source_digest(),
    })  # fmt: skip


def holds_phase_checkpoints(work_dir: Path) -> bool:
    """Whether a phase of ``work_dir`` wrote a checkpoint (the only thing a later run could resume)."""
    return any(path.is_file() for path in work_dir.rglob("*.ckpt"))


def claim_work_dir(work_dir: Path, identity: dict[str, object]) -> None:
    """Record ``identity`` in ``work_dir``; refuse a folder that holds another run's phases.

    Why: the search and fine-tuning resume from ``last.ckpt`` in the work folder; one left by a run
    on other weights, settings or data (same ``--out``) would otherwise hand back that run's model.
    A folder of another pruning run with no phase checkpoint yet (a start that failed) is taken over;
    a ``run.json`` that is not a pruning record (not this identity's keys: e.g. a training folder's)
    is never overwritten.
    """
    record = work_dir / WORK_RECORD
    identity = as_json(identity)
    kept = read_json(record) if record.is_file() else None
    if record.is_file() and not (isinstance(kept, dict) and kept.keys() == identity.keys()):
        raise UserError(
            f"{work_dir}: its {WORK_RECORD} is not a pruning record (another command's folder?); "
            "delete it or pass another --work-dir"
        )
    if record.is_file() and kept != identity and holds_phase_checkpoints(work_dir):
        raise UserError(
            f"{work_dir}: holds an earlier pruning of other weights or settings (model, recipe, data, options or "
            "audiosep's code); "
            "delete it or pass another --work-dir (or --out)"
        )
    if record.is_file():
        atomic_write_text(record, json.dumps(identity, indent=2))
        return
    if work_dir.exists() and not work_dir.is_dir():
        raise UserError(f"{work_dir}: exists and is not a folder; pass another --work-dir")
    if work_dir.exists() and any(path.name != LOCK_FILE for path in work_dir.iterdir()):
        raise UserError(f"{work_dir}: exists and is not a pruning work folder of this run; delete it or pass another --work-dir")
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps(identity, indent=2))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
