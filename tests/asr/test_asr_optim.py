"""NovoGrad against its update formula; the warm-up + cosine schedule against its definition."""

from __future__ import annotations

import math

import pytest
import torch

from audiosep.optim import NovoGrad, WarmupCosineLR


@pytest.mark.parametrize(("weight_decay", "grad_averaging"), [(0.0, False), (0.01, True)])
def test_novograd_matches_formula(weight_decay, grad_averaging):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))]
    reference = [p.detach().double().clone() for p in params]
    lr, (beta1, beta2), eps = 0.05, (0.9, 0.5), 1e-8
    opt = NovoGrad(
        params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, grad_averaging=grad_averaging
    )
    moments = [torch.zeros_like(r) for r in reference]
    second = [None, None]
    for _ in range(4):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        for i, g in enumerate(grads):
            g = g.double()
            norm_sq = float((g**2).sum())
            second[i] = norm_sq if second[i] is None else beta2 * second[i] + (1 - beta2) * norm_sq
            d = g / (math.sqrt(second[i]) + eps) + weight_decay * reference[i]
            moments[i] = beta1 * moments[i] + ((1 - beta1) * d if grad_averaging else d)
            reference[i] = reference[i] - lr * moments[i]
    for p, r in zip(params, reference, strict=True):
        torch.testing.assert_close(p.detach().double(), r, atol=1e-6, rtol=1e-6)


def test_novograd_trains_a_linear_regression():
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5])
    w = torch.nn.Parameter(torch.zeros(3))
    opt = NovoGrad([w], lr=0.1, betas=(0.9, 0.9))
    for _ in range(300):
        opt.zero_grad()
        ((x @ w - y) ** 2).mean().backward()
        opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([1.0, -2.0, 0.5]), atol=0.05, rtol=0)


def test_novograd_rejects_bad_hyperparameters():
    with pytest.raises(ValueError):
        NovoGrad([torch.nn.Parameter(torch.zeros(1))], betas=(1.0, 0.5))


def lr_trace(scheduler: WarmupCosineLR, steps: int) -> list[float]:
    trace = []
    for _ in range(steps):
        trace.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return trace


def test_warmup_then_cosine():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    trace = lr_trace(WarmupCosineLR(opt, warmup_steps=4, total_steps=14, min_lr_ratio=0.1), 16)
    expected = [(s + 1) / 5 for s in range(4)]
    expected += [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min((s - 4) / 10, 1))) for s in range(4, 16)]
    assert trace == pytest.approx(expected)


def test_total_steps_set_later_and_fractional_warmup():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = WarmupCosineLR(opt, warmup_steps=0.5)
    assert opt.param_groups[0]["lr"] == 2.0  # no length yet: base LR held
    scheduler.set_total_steps(10)
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0 / 6)  # step 0 of a 5-step warm-up
    with pytest.raises(ValueError):
        scheduler.set_total_steps(0)
