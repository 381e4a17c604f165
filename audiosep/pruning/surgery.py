"""Which channels to keep under a MACs budget, and the surgery that removes the others.

Surgery rebuilds the model from its ``init_args`` with the new per-layer widths and copies, for
every kept channel, *every* tensor that holds it: weights, biases, norm affine parameters and
BatchNorm statistics (SepPrune's public code copies only ``.weight``), and rescales what depends on
the width itself (the element-wise LN's ``sqrt(C - 1)``). The result is a plain
model of the same class whose checkpoint rebuilds with no extra arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from audiosep.models import ConvTasNet
from audiosep.nn.norms import ElementwiseLayerNorm
from audiosep.pruning.groups import ChannelGroup

Keep = dict[str, Tensor]  # group name -> sorted indices of the channels to keep


def pruned_macs(groups: list[ChannelGroup], keep: Keep, total: float) -> float:
    """Total MACs per audio second after keeping ``keep`` (the rest of the model is unchanged)."""
    return total - sum(g.macs_per_channel * (g.size - len(keep[g.name])) for g in groups)


def select_by_score(
    groups: list[ChannelGroup], scores: dict[str, Tensor], total: float, target: float, multiple: int = 1
) -> Keep:
    """Keep the highest-scored channels, across all groups, until the MACs reach ``target * total``.

    Channels are added from the highest score down while the budget allows (a channel whose cost
    would overshoot is skipped, a cheaper one may still fit); every group keeps at least
    ``multiple`` channels. With ``multiple > 1`` every width then becomes a multiple of it (odd
    widths are slow): widths are rounded down and the freed budget goes back ``multiple`` channels
    at a time to the groups whose next channels score highest, while it fits. The cost never
    exceeds the budget (beyond the floor of ``multiple`` channels per group).
    """
    budget = target * total - (total - sum(g.macs_per_channel * g.size for g in groups))
    order = [torch.argsort(scores[g.name], descending=True).tolist() for g in groups]
    ranked = sorted(
        ((float(scores[g.name][i]), gi, i) for gi, g in enumerate(groups) for i in range(g.size)), reverse=True
    )
    chosen: list[list[int]] = [order[gi][: min(multiple, g.size)] for gi, g in enumerate(groups)]  # the floor
    floor = [set(c) for c in chosen]
    spent = sum(g.macs_per_channel * len(chosen[gi]) for gi, g in enumerate(groups))
    for _, gi, index in ranked:
        g = groups[gi]
        if index in floor[gi] or spent + g.macs_per_channel > budget:
            continue
        chosen[gi].append(index)
        spent += g.macs_per_channel
    if multiple > 1:
        widths = _round_widths(groups, scores, order, [len(c) for c in chosen], multiple, budget)
        chosen = [order[gi][:width] for gi, width in enumerate(widths)]
    return {g.name: torch.tensor(sorted(chosen[gi]), dtype=torch.long) for gi, g in enumerate(groups)}


def _round_widths(
    groups: list[ChannelGroup], scores: dict[str, Tensor], order: list[list[int]], widths: list[int],
    multiple: int, budget: float,
) -> list[int]:  # fmt: skip
    """Widths rounded down to ``multiple`` (a whole group keeps its size), then grown one step at a time
    where the next ``multiple`` channels score highest on average, while the budget allows."""
    widths = [
        g.size if width == g.size else max(min(multiple, g.size), width // multiple * multiple)
        for g, width in zip(groups, widths, strict=True)
    ]
    spent = sum(g.macs_per_channel * width for g, width in zip(groups, widths, strict=True))
    while True:
        best, best_step, best_score = -1, 0, -math.inf
        for gi, g in enumerate(groups):
            step = min(multiple, g.size - widths[gi])
            if step <= 0 or spent + step * g.macs_per_channel > budget:
                continue
            upcoming = float(scores[g.name][order[gi][widths[gi] : widths[gi] + step]].mean())
            if upcoming > best_score:
                best, best_step, best_score = gi, step, upcoming
        if best < 0:
            return widths
        widths[best] += best_step
        spent += best_step * groups[best].macs_per_channel


def select_uniform(
    groups: list[ChannelGroup], scores: dict[str, Tensor], total: float, target: float, multiple: int = 1
) -> Keep:
    """Keep about the same fraction of every group (its highest-scored channels), sized to the budget.

    The baselines (L1 magnitude, random) use this: one ratio for all layers, found by bisection,
    then the rest of the budget goes one channel (or ``multiple``) at a time to the groups in turn.
    """
    budget = target * total - (total - sum(g.macs_per_channel * g.size for g in groups))

    def counts_for(ratio: float) -> list[int]:
        return [min(g.size, max(multiple, round(ratio * g.size / multiple) * multiple)) for g in groups]

    def cost(counts: list[int]) -> float:
        return sum(g.macs_per_channel * c for g, c in zip(groups, counts, strict=True))

    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (low, middle) if cost(counts_for(middle)) > budget else (middle, high)
    counts = counts_for(low)
    grown = True
    while grown:  # hand out what the common ratio left over, one step per group in turn
        grown = False
        for index, g in enumerate(groups):
            step = min(multiple, g.size - counts[index])
            if step > 0 and cost(counts) + step * g.macs_per_channel <= budget:
                counts[index] += step
                grown = True
    order = {g.name: torch.argsort(scores[g.name], descending=True) for g in groups}
    return {g.name: torch.sort(order[g.name][:count]).values for g, count in zip(groups, counts, strict=True)}


def l1_scores(model: nn.Module, groups: list[ChannelGroup]) -> dict[str, Tensor]:
    """L1-magnitude baseline: the L1 norm of each channel's weights in every tensor that holds it."""
    state = model.state_dict()
    scores = {}
    for g in groups:
        total = torch.zeros(g.size)
        for key, dim in g.slices:
            if key.endswith("weight") and state[key].shape[dim] == g.size:
                total += state[key].abs().transpose(0, dim).reshape(g.size, -1).sum(dim=1)
        scores[g.name] = total
    return scores


def random_scores(groups: list[ChannelGroup], seed: int) -> dict[str, Tensor]:
    """Random baseline: i.i.d. uniform scores, reproducible for ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return {g.name: torch.rand(g.size, generator=generator) for g in groups}


def _widths_override(model: nn.Module, groups: list[ChannelGroup], keep: Keep) -> dict[str, object]:
    """The constructor arguments that give the pruned widths."""
    widths = [len(keep[g.name]) for g in groups]
    if isinstance(model, ConvTasNet):
        return {"hidden_channels": widths}
    return {"ffn_dim": widths}


@torch.no_grad()
def remove_channels(model: nn.Module, groups: list[ChannelGroup], keep: Keep) -> nn.Module:
    """A new model of the same class without the channels not in ``keep`` (``model`` is untouched).

    Raises:
        ValueError: an index out of range, a repeated index, or an empty group.
    """
    for g in groups:
        indices = keep[g.name]
        if len(indices) == 0 or len(set(indices.tolist())) != len(indices) or int(indices.max()) >= g.size:
            raise ValueError(f"{g.name}: bad kept channels {indices.tolist()} for a group of {g.size}")
    init_args = model.init_args | _widths_override(model, groups, keep)
    pruned = type(model)(**init_args)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    for g in groups:
        for key, dim in g.slices:
            state[key] = state[key].index_select(dim, keep[g.name])
        for name in g.norms:
            _rescale_elementwise_ln(model.get_submodule(name), pruned.get_submodule(name), state, name)
    pruned.load_state_dict(state)
    return pruned.train(model.training)


def _rescale_elementwise_ln(old: nn.Module, new: nn.Module, state: dict[str, Tensor], name: str) -> None:
    """ELN's output scale ``sqrt(C - 1)`` follows its width: its weight absorbs the change."""
    if isinstance(old, ElementwiseLayerNorm):
        state[f"{name}.weight"] = state[f"{name}.weight"] * (old.scale / new.scale)


def prune_with(
    model: nn.Module,
    groups: list[ChannelGroup],
    scores: dict[str, Tensor],
    total: float,
    target: float,
    select: Callable[..., Keep] = select_by_score,
    multiple: int = 1,
) -> tuple[nn.Module, Keep]:
    """Select channels with ``select`` under the budget and remove the others."""
    keep = select(groups, scores, total, target, multiple)
    return remove_channels(model, groups, keep), keep
