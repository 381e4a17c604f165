"""Helpers of ``audiosep demo``: validation history, held-out scoring, example files, spectrograms."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from audiosep.inference import Separator, limit_peak, write_sources_atomic
from audiosep.metrics import separation_scores


class ValidationHistory(L.Callback):
    """Records ``val_si_snri`` after every validation, with the step and the elapsed time.

    Its rows and elapsed time go into every checkpoint (Lightning saves a callback's ``state_dict``), so a
    resumed run's curve goes on from the interrupted one's instead of starting again empty.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self._start = time.monotonic()
        self._elapsed_before = 0.0  # training time of the runs this one resumed

    def elapsed(self) -> float:
        """Seconds of training so far, resumed runs included."""
        return self._elapsed_before + time.monotonic() - self._start

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(row) for row in self.rows], "elapsed_s": self.elapsed()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(row) for row in state_dict.get("rows", [])]
        self._elapsed_before = float(state_dict.get("elapsed_s", 0.0))
        self._start = time.monotonic()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get("val_si_snri")
        if value is None or trainer.sanity_checking:
            return
        self.rows.append(
            {
                "epoch": trainer.current_epoch,
                "step": trainer.global_step,
                "elapsed_s": round(self.elapsed(), 1),
                "val_si_snri": round(float(value), 3),
            }
        )


@dataclass(frozen=True)
class Example:
    """One separated held-out mixture with its references (all at the model's rate)."""

    mixture_id: str
    mixture: Tensor  # T
    estimates: Tensor  # S, T
    references: Tensor  # S, T


def evaluate_separator(separator: Separator, dataset: Dataset) -> float:
    """Mean SI-SNRi (dB) of ``separator`` over a dataset of ``(mixture, sources, id)`` items."""
    values = []
    for mixture, sources, _ in dataset:
        estimate = separator.separate_at_model_rate(mixture)
        values.append(float(separation_scores(estimate[None], sources[None], mixture[None]).si_snri[0]))
    return sum(values) / len(values)


def write_examples(separator: Separator, dataset: Dataset, out_dir: Path, count: int) -> list[Example]:
    """Separate the first ``count`` items and write mixture, estimates and references as wav."""
    examples = []
    for index in range(min(count, len(dataset))):
        mixture, sources, mixture_id = dataset[index]
        estimates = limit_peak(separator.separate_at_model_rate(mixture), mixture_id)
        names = [out_dir / f"{mixture_id}_mixture.wav"]
        names += [out_dir / f"{mixture_id}_est{k + 1}.wav" for k in range(len(estimates))]
        names += [out_dir / f"{mixture_id}_ref{k + 1}.wav" for k in range(len(sources))]
        write_sources_atomic(torch.cat([mixture[None], estimates, sources]), separator.sample_rate, names)
        examples.append(Example(mixture_id, mixture, estimates, sources))
    return examples


def plot_spectrograms(example: Example, sample_rate: int, path: Path) -> None:
    """Save a PNG of the mixture's, the estimates' and the references' log spectrograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("mixture", example.mixture)]
    rows += [(f"estimate {k + 1}", s) for k, s in enumerate(example.estimates)]
    rows += [(f"reference {k + 1}", s) for k, s in enumerate(example.references)]
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 1.8 * len(rows)), sharex=True)
    cmap = plt.get_cmap("magma").with_extremes(bad="black")  # digital silence: -inf dB, drawn as the floor
    for axis, (title, signal) in zip(axes, rows, strict=True):
        with np.errstate(divide="ignore"):  # its log10(0) warned "divide by zero" on every demo run
            axis.specgram(signal.numpy(), NFFT=256, Fs=sample_rate, noverlap=192, cmap=cmap)
        axis.set_title(title, fontsize=9, loc="left")
        axis.set_ylabel("Hz")
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(f"{example.mixture_id}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
