"""Separation metrics per utterance: SI-SNR(i) and SDR(i).

SI-SNR is :func:`audiosep.losses.si_snr` (tested against torchmetrics); SDR is torchmetrics'
``signal_distortion_ratio`` (BSS-eval v4 style, 512-tap distortion filter), which agrees with
mir_eval's ``bss_eval_sources`` within a few hundredths of a dB (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor
from torchmetrics.functional.audio import signal_distortion_ratio

from audiosep.losses import pit_si_snr, reorder_sources, si_snr


@dataclass(frozen=True)
class SeparationScores:
    """Scores of one batch, per utterance (averaged over sources), in dB: each a ``Tensor[B]``."""

    si_snr: Tensor
    si_snri: Tensor
    sdr: Tensor | None = None
    sdri: Tensor | None = None


def separation_scores(
    estimate: Tensor, reference: Tensor, mixture: Tensor, with_sdr: bool = False
) -> SeparationScores:
    """Permutation-aligned SI-SNR/SI-SNRi (and SDR/SDRi) of ``estimate[B, S, T]``.

    The improvement is relative to using the mixture ``[B, T]`` itself as every estimate.
    """
    per_source, perm = pit_si_snr(estimate, reference)
    mixture_as_estimate = mixture.unsqueeze(1).expand_as(reference)
    baseline = si_snr(mixture_as_estimate, reference)
    scores = {"si_snr": per_source.mean(-1), "si_snri": (per_source - baseline).mean(-1)}
    if with_sdr:
        aligned = reorder_sources(estimate, perm).double()
        sdr = signal_distortion_ratio(aligned, reference.double()).float()
        sdr_mix = signal_distortion_ratio(mixture_as_estimate.double(), reference.double()).float()
        scores.update(sdr=sdr.mean(-1), sdri=(sdr - sdr_mix).mean(-1))
    return SeparationScores(**scores)

