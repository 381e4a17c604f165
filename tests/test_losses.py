"""SI-SNR against float64 formula and torchmetrics; PIT against brute force."""

import itertools

import pytest
import torch
from torchmetrics.functional.audio import scale_invariant_signal_noise_ratio

from audiosep.losses import PITSISNRLoss, best_permutation, pit_si_snr, si_snr


def si_snr_float64(estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    estimate = estimate.double() - estimate.double().mean(-1, keepdim=True)
    reference = reference.double() - reference.double().mean(-1, keepdim=True)
    target = (estimate * reference).sum(-1, keepdim=True) / reference.pow(2).sum(-1, keepdim=True) * reference
    return 10 * torch.log10(target.pow(2).sum(-1) / (estimate - target).pow(2).sum(-1))


def test_si_snr_matches_formula_and_torchmetrics() -> None:
    torch.manual_seed(0)
    reference = torch.randn(3, 2, 800)
    estimate = 0.5 * reference + 0.3 * torch.randn(3, 2, 800) + 0.1
    ours = si_snr(estimate, reference)
    torch.testing.assert_close(ours.double(), si_snr_float64(estimate, reference), atol=1e-4, rtol=0)
    torch.testing.assert_close(ours, scale_invariant_signal_noise_ratio(estimate, reference), atol=1e-4, rtol=0)


def test_si_snr_is_scale_invariant_and_finite_on_silence() -> None:
    reference = torch.randn(1, 400)
    estimate = reference + 0.1 * torch.randn(1, 400)
    torch.testing.assert_close(si_snr(7.0 * estimate, reference), si_snr(estimate, reference), atol=1e-4, rtol=0)
    assert torch.isfinite(si_snr(torch.zeros(1, 400), torch.zeros(1, 400))).all()


def test_si_snr_is_float32_under_bf16_autocast() -> None:
    reference = torch.randn(2, 1000)
    estimate = reference + 0.01 * torch.randn(2, 1000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = si_snr(estimate.bfloat16(), reference.bfloat16())
    assert value.dtype == torch.float32
    expected = si_snr_float64(estimate.bfloat16().float(), reference.bfloat16().float())
    torch.testing.assert_close(value.double(), expected, atol=1e-3, rtol=0)


def brute_force_pit(estimate: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, list[tuple]]:
    best_values, best_perms = [], []
    for est, ref in zip(estimate, reference, strict=True):
        candidates = [
            (si_snr_float64(est[list(p)], ref).mean(), p) for p in itertools.permutations(range(len(est)))
        ]
        value, perm = max(candidates, key=lambda c: c[0])
        best_values.append(value)
        best_perms.append(perm)
    return torch.stack(best_values), best_perms


@pytest.mark.parametrize("num_sources", [2, 3, 4, 5])
def test_pit_matches_brute_force(num_sources: int) -> None:
    torch.manual_seed(num_sources)
    reference = torch.randn(4, num_sources, 300)
    shuffled = torch.stack([reference[b, torch.randperm(num_sources)] for b in range(4)])
    estimate = shuffled + 0.8 * torch.randn_like(shuffled)
    per_source, perm = pit_si_snr(estimate, reference)
    expected_values, expected_perms = brute_force_pit(estimate, reference)
    torch.testing.assert_close(per_source.mean(-1).double(), expected_values, atol=1e-4, rtol=0)
    assert [tuple(p.tolist()) for p in perm] == expected_perms


def test_hungarian_equals_exhaustive_on_random_scores() -> None:
    torch.manual_seed(1)
    scores = torch.randn(6, 5, 5)
    perm = best_permutation(scores)
    for b in range(6):
        best = max(itertools.permutations(range(5)), key=lambda p: sum(scores[b, p[j], j] for j in range(5)))
        assert tuple(perm[b].tolist()) == best


def test_pit_loss_is_negative_mean_and_differentiable() -> None:
    reference = torch.randn(2, 2, 200)
    estimate = reference.flip(1).clone().requires_grad_(True)
    loss = PITSISNRLoss()(estimate, reference)
    loss.backward()
    assert loss.item() < -60  # a perfect estimate, swapped, is found by PIT
    assert estimate.grad is not None


def test_pit_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="equal shape"):
        pit_si_snr(torch.randn(1, 2, 10), torch.randn(1, 3, 10))
