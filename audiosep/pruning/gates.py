"""Differentiable channel gates attached to a plain model with forward pre-hooks.

Relaxation (SepPrune's public code does not publish one; this is our choice): one learnable score
``s`` per channel; the forward pass multiplies the channel by the *hard* gate
``1[sigmoid(s) > threshold]`` and the backward pass uses the gradient of ``sigmoid(s)``
(straight-through estimator). Why: the network only ever sees 0/1 gates, so the scores are trained
on networks of whole channels, as surgery produces (a sigmoid or hard-concrete gate trains a network
with half-open channels that no pruned model reproduces), and all-open gates change nothing at all.
The channels kept are then the best-scored within the MACs budget, which need not be the gates left
open. Scores start at ``init_score`` (sigmoid 0.95), above every threshold.

The MACs budget term is differentiable too: the expected cost ``sum(macs_per_channel *
sigmoid(s))`` relative to the model's total, penalised above the target.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from audiosep.pruning.groups import ChannelGroup
from audiosep.pruning.masked_norms import normalize_open, pools_over_channels

INIT_SCORE = 3.0


def _key(name: str) -> str:
    """ParameterDict keys may not contain dots."""
    return name.replace(".", "__")


class ChannelGates(nn.Module):
    """One score per channel of each group; :meth:`attach` makes the gates act on a model.

    Args:
        groups: the groups to gate.
        threshold: a channel is open while ``sigmoid(score) > threshold`` (0.7 in SepPrune).
        init_score: initial score of every channel.
    """

    def __init__(self, groups: list[ChannelGroup], threshold: float = 0.7, init_score: float = INIT_SCORE) -> None:
        super().__init__()
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.groups = groups
        self.threshold = threshold
        self.scores = nn.ParameterDict(
            {_key(g.name): nn.Parameter(torch.full((g.size,), float(init_score))) for g in groups}
        )
        self._handles: list[RemovableHandle] = []

    def score(self, group: ChannelGroup) -> Tensor:
        return self.scores[_key(group.name)]

    def gate(self, group: ChannelGroup) -> Tensor:
        """Hard 0/1 gate forward, ``sigmoid`` gradient backward."""
        soft = torch.sigmoid(self.score(group))
        hard = (soft > self.threshold).to(soft.dtype)
        return hard + soft - soft.detach()

    def attach(self, model: nn.Module) -> None:
        """Register the hooks that make ``model`` the pruned model: each gate point's input times its
        gate, and each channel-pooling norm of a group recomputed over the open channels."""
        self.detach()
        for group in self.groups:
            module = model.get_submodule(group.gate_point)
            self._handles.append(module.register_forward_pre_hook(self._hook(group)))
            for name in group.norms:
                norm = model.get_submodule(name)
                if pools_over_channels(norm):
                    self._handles.append(norm.register_forward_hook(self._norm_hook(group)))

    def detach(self) -> None:
        """Remove the hooks: the model is plain again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, group: ChannelGroup):
        def multiply(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            x = args[0]
            shape = [1] * x.dim()
            shape[group.channel_dim] = -1
            return (x * self.gate(group).to(x.dtype).view(shape), *args[1:])

        return multiply

    def _norm_hook(self, group: ChannelGroup):
        def open_statistics(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
            gate = self.gate(group)
            recomputed = normalize_open(module, args[0], gate)
            # All open: the norm's own numbers (bit-exact) with the recomputation's gradient; chosen on
            # the device (no host sync per norm and step).
            all_open = (gate.detach() > 0).all()
            return torch.where(all_open, output.detach() + (recomputed - recomputed.detach()), recomputed)

        return open_statistics

    def expected_macs(self) -> Tensor:
        """Differentiable gated cost: ``sum(macs_per_channel * sigmoid(score))`` per audio second."""
        return sum(g.macs_per_channel * torch.sigmoid(self.score(g)).sum() for g in self.groups)

    def open_channels(self) -> dict[str, Tensor]:
        """Indices of the open channels of each group (by the hard gate)."""
        return {
            g.name: torch.nonzero(torch.sigmoid(self.score(g)) > self.threshold).flatten() for g in self.groups
        }
