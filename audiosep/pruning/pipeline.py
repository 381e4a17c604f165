"""SepPrune end to end: score channels, remove them under a MACs budget, fine-tune, measure.

``method="sepprune"`` learns the scores with :class:`~audiosep.pruning.task.ChannelGateTask`
(weights frozen) and keeps the best channels across all layers; ``l1`` and ``random`` are the
baselines: one keep ratio for every layer, channels ranked by weight magnitude or at random.
All three then fine-tune the same way (Lightning, Adam 1e-3, the normal
:class:`~audiosep.tasks.separation.SeparationTask`). Every Lightning phase writes checkpoints in
``work_dir`` and resumes from them when the same command runs again.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch import nn

from audiosep.errors import UserError
from audiosep.io import atomic_write_text, read_json
from audiosep.models.base import weights_sha256
from audiosep.pruning.gates import ChannelGates
from audiosep.pruning.groups import ChannelGroup, find_groups, total_macs
from audiosep.pruning.latency import measure_latency
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
    data_source: str | None = None  # the recipe and data root the phases train on (resume is only right on the same)


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
    latency_before_s: float | None = None
    latency_after_s: float | None = None
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
) -> dict[str, torch.Tensor]:
    """Per-channel scores by ``settings.method`` (higher = keep)."""
    if settings.method == "l1":
        return l1_scores(model, groups)
    if settings.method == "random":
        return random_scores(groups, settings.seed)
    if datamodule is None:
        raise ValueError("sepprune learns its scores on data: give a datamodule")
    gates = ChannelGates(groups, threshold=settings.threshold)
    task = ChannelGateTask(model, gates, macs, settings.target_macs, settings.budget_weight, settings.search_lr)
    trainer = _trainer(work_dir / "search", settings, max_steps=settings.search_steps, max_epochs=1)
    trainer.fit(task, datamodule=datamodule, ckpt_path=_resume(work_dir / "search"))
    gates.detach()
    return {g.name: gates.score(g).detach().clone() for g in groups}


def select_channels(
    groups: list[ChannelGroup], scores: dict[str, torch.Tensor], macs: float, settings: PruneSettings
) -> Keep:
    """SepPrune allocates across layers by learned score; the baselines keep one ratio per layer."""
    select = select_by_score if settings.method == "sepprune" else select_uniform
    return select(groups, scores, macs, settings.target_macs, settings.multiple)


def finetune(
    model: nn.Module, settings: PruneSettings, datamodule: L.LightningDataModule, work_dir: Path, sample_rate: int
) -> nn.Module:
    """Fine-tune the pruned model with the normal separation task; returns the best-validation weights."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from audiosep.tasks.separation import SeparationTask

    task = SeparationTask(model, sample_rate=sample_rate)  # Adam at 1e-3, as SepPrune fine-tunes
    best = ModelCheckpoint(dirpath=work_dir / "finetune", monitor="val_si_snri", mode="max", save_last=True)
    steps = _epochs_to_steps(settings.finetune_epochs, datamodule)
    trainer = _trainer(work_dir / "finetune", settings, max_steps=steps, callbacks=[best])
    trainer.fit(task, datamodule=datamodule, ckpt_path=_resume(work_dir / "finetune"))
    if best.best_model_path:
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        task.load_state_dict(state)
    return task.model.eval()


def _epochs_to_steps(epochs: float, datamodule: L.LightningDataModule) -> int:
    datamodule.setup("fit")
    return max(1, round(epochs * len(datamodule.train_dataloader())))


def _trainer(root: Path, settings: PruneSettings, **kwargs) -> L.Trainer:
    defaults = dict(
        default_root_dir=str(root), accelerator=settings.accelerator, devices=1, gradient_clip_val=5.0,
        logger=False, enable_model_summary=False, val_check_interval=0.5, max_epochs=-1,
        enable_checkpointing="callbacks" in kwargs,
    )  # fmt: skip
    if "callbacks" not in kwargs:
        from lightning.pytorch.callbacks import ModelCheckpoint

        kwargs["callbacks"] = [ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0)]
        defaults["enable_checkpointing"] = True
    return L.Trainer(**(defaults | kwargs))


def _resume(root: Path) -> str | None:
    """``last.ckpt`` of an interrupted phase, if there is one."""
    last = root / "last.ckpt"
    return str(last) if last.is_file() else None


@torch.inference_mode()
def validation_si_snri(model: nn.Module, datamodule: L.LightningDataModule) -> float:
    """Mean SI-SNRi (dB) of ``model`` over the validation split, in eval mode on CPU."""
    from audiosep.metrics import separation_scores

    datamodule.setup("validate")
    model = model.cpu().eval()
    values = [
        float(separation_scores(model(mixture), sources, mixture).si_snri.mean())
        for mixture, sources, _ in datamodule.val_dataloader()
    ]
    return statistics.fmean(values)


def prune_model(
    model: nn.Module,
    sample_rate: int,
    settings: PruneSettings,
    datamodule: L.LightningDataModule | None,
    work_dir: Path,
    latency_seconds: float = 4.0,
) -> tuple[nn.Module, PruneReport]:
    """Score, select, remove and (when ``finetune_epochs > 0``) fine-tune; report every figure."""
    L.seed_everything(settings.seed, verbose=False)
    model = model.cpu().eval()
    claim_work_dir(work_dir, run_identity(model, sample_rate, settings))
    groups = find_groups(model, sample_rate)
    macs = total_macs(model, sample_rate)
    scores = score_channels(model, groups, macs, settings, datamodule, work_dir)
    keep = select_channels(groups, scores, macs, settings)
    pruned = remove_channels(model, groups, keep).eval()
    report = PruneReport(
        method=settings.method, seed=settings.seed,
        params_before=_params(model), params_after=_params(pruned),
        macs_before=macs, macs_after=pruned_macs(groups, keep, macs),
        widths=[len(keep[g.name]) for g in groups],
    )  # fmt: skip
    report.extra["macs_after_counted"] = total_macs(pruned, sample_rate)
    if datamodule is not None:
        report.si_snri_before = validation_si_snri(model, datamodule)
        report.si_snri_pruned = validation_si_snri(pruned, datamodule)
        if settings.finetune_epochs > 0:
            pruned = finetune(pruned, settings, datamodule, work_dir, sample_rate)
            report.si_snri_after = validation_si_snri(pruned, datamodule)
    if latency_seconds > 0:
        latency = measure_latency({"before": model, "after": pruned}, latency_seconds, sample_rate)
        report.latency_before_s, report.latency_after_s = latency["before"], latency["after"]
    return pruned.eval(), report


def run_identity(model: nn.Module, sample_rate: int, settings: PruneSettings) -> dict[str, object]:
    """What a resumed phase must share with this run: the input weights (a digest) and the settings."""
    settings_record = {key: value for key, value in asdict(settings).items() if key != "accelerator"}
    return {"weights_sha256": weights_sha256(model), "sample_rate": sample_rate, "settings": settings_record}


def claim_work_dir(work_dir: Path, identity: dict[str, object]) -> None:
    """Record ``identity`` in ``work_dir``; refuse a folder that holds another run's phases.

    Why: the search and fine-tuning resume from ``last.ckpt`` in the work folder; one left by a run
    on other weights or settings (same ``--out``) would otherwise hand back that run's model.
    """
    record = work_dir / WORK_RECORD
    if record.exists():
        if read_json(record) != identity:
            raise UserError(
                f"{work_dir}: holds an earlier pruning of other weights or settings; delete it or pass another "
                "--work-dir (or --out)"
            )
        return
    if work_dir.exists() and not work_dir.is_dir():
        raise UserError(f"{work_dir}: exists and is not a folder; pass another --work-dir")
    if work_dir.exists() and any(work_dir.iterdir()):
        raise UserError(f"{work_dir}: exists and is not a pruning work folder of this run; delete it or pass another --work-dir")
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps(identity, indent=2))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
