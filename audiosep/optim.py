"""NovoGrad (the optimizer QuartzNet was trained with) and a cosine learning-rate schedule with warm-up.

No maintained package ships NovoGrad (``torch-optimizer`` is archived), so it is written here
following Ginsburg et al. 2019, "Stochastic Gradient Methods with Layer-wise Adaptive Moments",
Algorithm 1, with NeMo's conventions (second moment initialised to the first squared norm, decoupled
from the step by ``eps``; weight decay added to the normalised gradient).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class NovoGrad(Optimizer):
    """Adam-like optimizer with one second moment per layer (a scalar per parameter tensor).

    For a parameter ``w`` with gradient ``g`` at step ``t``::

        v_t = ||g||^2                                   if t == 1
        v_t = beta2 v_{t-1} + (1 - beta2) ||g||^2       otherwise
        d   = g / (sqrt(v_t) + eps) + weight_decay * w
        m_t = beta1 m_{t-1} + (1 - beta1) d             (grad_averaging) or  beta1 m_{t-1} + d
        w  <- w - lr m_t

    Args:
        params: parameters or parameter groups.
        lr: learning rate (QuartzNet: 0.01 at batch 256).
        betas: ``(beta1, beta2)`` (QuartzNet: (0.8, 0.5); NeMo's default (0.95, 0.98)).
        eps: added to the layer's gradient norm.
        weight_decay: decoupled-from-moments L2 term (QuartzNet: 0.001).
        grad_averaging: scale the first moment update by ``1 - beta1``.

    Raises:
        ValueError: a negative learning rate, betas outside ``[0, 1)``, a negative eps or decay.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.95, 0.98),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        grad_averaging: bool = False,
    ) -> None:
        if lr < 0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"eps and weight_decay must be >= 0, got {eps}, {weight_decay}")
        defaults = {
            "lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
            "grad_averaging": grad_averaging,
        }  # fmt: skip
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 (torch's Optimizer signature)
        """One update of every parameter that has a gradient; returns the closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("NovoGrad does not support sparse gradients")
                self._update(param, group, beta1, beta2)
        return loss

    def _update(self, param: Tensor, group: dict, beta1: float, beta2: float) -> None:
        grad = param.grad.float()
        state = self.state[param]
        norm_sq = grad.pow(2).sum()
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(grad)
            state["exp_avg_sq"] = norm_sq.clone()
        else:
            state["exp_avg_sq"].mul_(beta2).add_(norm_sq, alpha=1 - beta2)
        state["step"] += 1
        direction = grad / (state["exp_avg_sq"].sqrt() + group["eps"])
        if group["weight_decay"]:
            direction.add_(param.float(), alpha=group["weight_decay"])
        if group["grad_averaging"]:
            direction.mul_(1 - beta1)
        state["exp_avg"].mul_(beta1).add_(direction)
        param.add_(state["exp_avg"].to(param.dtype), alpha=-group["lr"])


class WarmupCosineLR(LRScheduler):
    """Linear warm-up from 0 to the base LR, then cosine decay to ``min_lr_ratio * base`` (per step).

    ``interval = "step"`` tells :class:`audiosep.tasks.asr.ASRTask` (and a Lightning
    ``configure_optimizers``) to step it after every optimizer step.

    Args:
        optimizer: the wrapped optimizer.
        warmup_steps: steps of linear warm-up (an int), or a fraction of ``total_steps`` (a float < 1).
        total_steps: length of the schedule; ``None`` = set later via :meth:`set_total_steps` (the
            task fills it from the trainer's estimated number of steps; until then the LR holds).
        min_lr_ratio: final LR as a fraction of the base LR.
    """

    interval = "step"

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int | float = 0,
        total_steps: int | None = None,
        min_lr_ratio: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.warmup_steps, self.total_steps, self.min_lr_ratio = warmup_steps, total_steps, min_lr_ratio
        super().__init__(optimizer, last_epoch)

    def set_total_steps(self, total_steps: int) -> None:
        """Fix the schedule length when it was not given (e.g. from ``trainer.estimated_stepping_batches``)."""
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = int(total_steps)
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def lr_factor(self, step: int) -> float:
        """Multiplier of the base LR at ``step`` (0-based)."""
        total = self.total_steps
        warmup = self.warmup_steps
        if isinstance(warmup, float):
            warmup = 0 if total is None else round(warmup * total)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if total is None:
            return 1.0  # no length yet: hold the base LR
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        factor = self.lr_factor(self.last_epoch)
        return [base * factor for base in self.base_lrs]
