"""Where a separator spends: per-layer parameters, MACs and measured CPU time, and the prunable groups.

Times come from forward hooks around every leaf module (CPU, so no device sync is needed) on the
plain model, median over repeats; a module's *self* time excludes its children, so the fused
attention kernel shows up as the self time of its attention module. MACs come from
``FlopCounterMode`` per module, plus the attention products it does not count (:mod:`audiosep.cost`).
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from audiosep.nn.attention import MultiHeadSelfAttention
from audiosep.pruning.groups import find_groups


@dataclass
class LayerCost:
    """One module's own share of a forward pass."""

    name: str
    kind: str
    params: int
    macs: float
    time_s: float
    time_share: float


@dataclass
class GroupCost:
    """One prunable group: its channels and what they cost."""

    name: str
    channels: int
    macs: float
    macs_share: float
    time_share: float


def _own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


@torch.inference_mode()
def _self_times(model: nn.Module, mixture: torch.Tensor, repeats: int) -> tuple[dict[str, float], float]:
    """Median self time of every module that owns parameters or is attention, and of the whole pass."""
    watched = {name: m for name, m in model.named_modules() if _own_params(m) or isinstance(m, MultiHeadSelfAttention)}
    stack: list[tuple[str, float, list[float]]] = []
    runs: dict[str, list[float]] = defaultdict(list)
    totals = []

    def before(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            stack.append((name, time.perf_counter(), [0.0]))

        return hook

    def after(name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            _, start, children = stack.pop()
            elapsed = time.perf_counter() - start
            runs[name][-1] += elapsed - children[0]
            if stack:
                stack[-1][2][0] += elapsed

        return hook

    handles = []
    for name, module in watched.items():
        handles += [module.register_forward_pre_hook(before(name)), module.register_forward_hook(after(name))]
    try:
        for _ in range(repeats + 1):  # the first pass warms up and is dropped
            for name in watched:
                runs[name].append(0.0)
            start = time.perf_counter()
            model(mixture)
            totals.append(time.perf_counter() - start)
    finally:
        for handle in handles:
            handle.remove()
    return {name: statistics.median(values[1:]) for name, values in runs.items()}, statistics.median(totals[1:])


def _module_macs(model: nn.Module, mixture: torch.Tensor) -> dict[str, float]:
    """Own MACs of every module: the flop counter's per-module totals minus their children's."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(mixture)
    root = type(model).__name__
    # Keys are "Global", "<Class>" and "<Class>.<module name>"; map them to module names.
    inclusive = {
        key.removeprefix(root).removeprefix("."): sum(ops.values()) / 2
        for key, ops in counter.get_flop_counts().items()
        if key != "Global"
    }
    own = {}
    for name, _ in model.named_modules():
        children = [k for k in inclusive if k != name and (k.rsplit(".", 1)[0] if "." in k else "") == name and k]
        own[name] = inclusive.get(name, 0.0) - sum(inclusive[k] for k in children)
    return own


def profile_model(model: nn.Module, sample_rate: int, seconds: float = 4.0, repeats: int = 5) -> dict:
    """Layer and group costs of ``model`` (eval mode, CPU, batch 1) on ``seconds`` of audio."""
    model = model.eval()
    found = find_groups(model, sample_rate)  # first: a model with no pruning rule is named, not run with wrong inputs
    mixture = 0.1 * torch.randn(1, int(seconds * sample_rate))
    times, total_time = _self_times(model, mixture, repeats)
    macs = _module_macs(model, mixture)
    attention = _attention_products(model, mixture)
    modules = dict(model.named_modules())
    layers = [
        LayerCost(name, type(modules[name]).__name__, _own_params(modules[name]),
                  macs.get(name, 0.0) + attention.get(name, 0.0), t, t / total_time)
        for name, t in times.items()
    ]  # fmt: skip
    total_macs = sum(macs.values()) + sum(attention.values())
    groups = []
    for group in found:
        group_macs = group.macs_per_channel * group.size * seconds
        owner = group.gate_point.rsplit(".", 1)[0]  # the block (Conv-TasNet) or the FFN (transformers)
        share = sum(layer.time_s for layer in layers if layer.name.startswith(owner + ".")) / total_time
        groups.append(GroupCost(group.name, group.size, group_macs, group_macs / total_macs, share))
    groups.sort(key=lambda g: g.macs, reverse=True)
    return {
        "seconds": seconds, "sample_rate": sample_rate, "time_s": total_time, "macs": total_macs,
        "layers": [asdict(layer) for layer in sorted(layers, key=lambda cost: cost.time_s, reverse=True)],
        "groups": [asdict(group) for group in groups],
    }  # fmt: skip


def _attention_products(model: nn.Module, mixture: torch.Tensor) -> dict[str, float]:
    """``Q K^T`` and ``A V`` MACs of each attention module (not counted by FlopCounterMode on CPU)."""
    products: dict[str, float] = defaultdict(float)
    names = {id(m): n for n, m in model.named_modules()}

    def hook(module: nn.Module, args: tuple, output: object) -> None:
        batch, length, _ = args[0].shape
        products[names[id(module)]] += 2.0 * batch * length * length * module.qkv.out_features / 3

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, MultiHeadSelfAttention)]
    try:
        with torch.inference_mode():
            model(mixture)
    finally:
        for handle in handles:
            handle.remove()
    return products


def format_profile(profile: dict, top: int = 15) -> str:
    """Two terminal tables: the costliest layers, then the prunable groups by MACs."""
    lines = [f"{'layer':48s} {'kind':22s} {'params':>9s} {'GMAC':>8s} {'time %':>7s}"]
    for layer in profile["layers"][:top]:
        lines.append(
            f"{layer['name'][:48]:48s} {layer['kind'][:22]:22s} {layer['params']:9d} "
            f"{layer['macs'] / 1e9:8.3f} {100 * layer['time_share']:7.1f}"
        )
    lines += ["", f"{'prunable group':48s} {'channels':>8s} {'MACs %':>7s} {'time %':>7s}"]
    for group in profile["groups"]:
        lines.append(
            f"{group['name'][:48]:48s} {group['channels']:8d} {100 * group['macs_share']:7.1f} "
            f"{100 * group['time_share']:7.1f}"
        )
    return "\n".join(lines)
