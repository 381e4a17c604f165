"""Training losses: scale-invariant SNR and a permutation-invariant (PIT) wrapper.

SI-SNR is always computed in float32, even under bf16/fp16 autocast: the energy ratios of
quiet sources underflow in half precision.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

EXHAUSTIVE_PIT_MAX_SOURCES = 3


def si_snr(estimate: Tensor, reference: Tensor, eps: float = 1e-8, dtype: torch.dtype = torch.float32) -> Tensor:
    """Scale-invariant SNR in dB over the last (time) dimension, zero-mean, eps-safe.

    Args:
        estimate: ``[..., T]``.
        reference: ``[..., T]``, same shape.
        eps: floor added to energies so silent signals give finite values.
        dtype: computed in (float32 for the loss; the metrics take float64).

    Returns:
        ``[...]`` SI-SNR in dB (``dtype``).
    """
    if estimate.shape != reference.shape:
        raise ValueError(f"estimate {tuple(estimate.shape)} and reference {tuple(reference.shape)} differ")
    with torch.autocast(device_type=estimate.device.type, enabled=False):
        estimate = estimate.to(dtype)
        reference = reference.to(dtype)
        estimate = estimate - estimate.mean(dim=-1, keepdim=True)
        reference = reference - reference.mean(dim=-1, keepdim=True)
        dot = (estimate * reference).sum(dim=-1, keepdim=True)
        ref_energy = reference.pow(2).sum(dim=-1, keepdim=True) + eps
        target = dot / ref_energy * reference
        noise = estimate - target
        ratio = (target.pow(2).sum(dim=-1) + eps) / (noise.pow(2).sum(dim=-1) + eps)
        return 10 * torch.log10(ratio)


def all_pairs(metric: Callable[[Tensor, Tensor], Tensor], estimate: Tensor, reference: Tensor) -> Tensor:
    """``metric`` of every estimate against every reference: ``[B, S, T] x [B, S, T] -> [B, S_est, S_ref]``."""
    # B, S_est, 1, T  vs  B, 1, S_ref, T  -> B, S_est, S_ref
    return metric(
        estimate.unsqueeze(2).expand(-1, -1, reference.shape[1], -1),
        reference.unsqueeze(1).expand(-1, estimate.shape[1], -1, -1),
    )


def pairwise_si_snr(estimate: Tensor, reference: Tensor, eps: float = 1e-8) -> Tensor:
    """SI-SNR of every estimate against every reference: ``[B, S, T] x [B, S, T] -> [B, S_est, S_ref]``."""
    return all_pairs(functools.partial(si_snr, eps=eps), estimate, reference)


def best_permutation(pairwise: Tensor) -> Tensor:
    """Permutation maximising the summed pairwise score, ``[B, S, S] -> [B, S]``.

    ``perm[b, j]`` is the estimate assigned to reference ``j``. All permutations are tried up to
    three sources; beyond, the Hungarian algorithm (scipy) solves the assignment exactly.
    """
    batch, num_sources, _ = pairwise.shape
    if num_sources <= EXHAUSTIVE_PIT_MAX_SOURCES:
        perms = torch.tensor(list(itertools.permutations(range(num_sources))), device=pairwise.device)
        # score[b, p] = sum_j pairwise[b, perms[p, j], j]
        ref_index = torch.arange(num_sources, device=pairwise.device)
        scores = pairwise[:, perms, ref_index].sum(dim=-1)  # B, P
        return perms[scores.argmax(dim=-1)]
    rows = []
    for matrix in pairwise.detach().float().cpu().numpy():
        est_idx, ref_idx = linear_sum_assignment(matrix, maximize=True)
        rows.append(torch.as_tensor(est_idx[ref_idx.argsort()]))
    return torch.stack(rows).to(pairwise.device)


def reorder_sources(estimate: Tensor, perm: Tensor) -> Tensor:
    """Reorder ``estimate[B, S, T]`` so that source j is estimate ``perm[:, j]``."""
    return torch.gather(estimate, 1, perm.unsqueeze(-1).expand(-1, -1, estimate.shape[-1]))


def pit_si_snr(estimate: Tensor, reference: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Permutation-invariant SI-SNR.

    Returns:
        ``(si_snr[B, S], perm[B, S])``: per-source SI-SNR under the best permutation, and that
        permutation (reference j <- estimate ``perm[:, j]``).
    """
    if estimate.dim() != 3 or estimate.shape != reference.shape:
        raise ValueError(
            f"expected estimate and reference of equal shape [B, S, T], got "
            f"{tuple(estimate.shape)} and {tuple(reference.shape)}"
        )
    pairwise = pairwise_si_snr(estimate, reference, eps)
    perm = best_permutation(pairwise)
    per_source = torch.gather(pairwise, 1, perm.unsqueeze(1)).squeeze(1)  # B, S_ref
    return per_source, perm


class PITSISNRLoss(nn.Module):
    """Negative permutation-invariant SI-SNR averaged over sources and batch (lower is better)."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, estimate: Tensor, reference: Tensor) -> Tensor:
        per_source, _ = pit_si_snr(estimate, reference, self.eps)
        return -per_source.mean()
