"""Prunable channel groups of each separator, and their cost per channel.

A *group* is a set of channels that are removed together from every tensor that holds them:

- Conv-TasNet: the hidden channels ``H`` of each TCN block (rows of ``in_conv``, the block's
  norms, PReLU-free depthwise conv, columns of ``out_conv``);
- SepFormer / RE-SepFormer / Tiny-Sepformer: the hidden units of each feed-forward network
  (rows of ``ffn[0]``, columns of ``ffn[3]``), layer by layer in
  :func:`audiosep.nn.dual_path.transformer_layers` order.

Each group has a *gate point*: the module whose input carries exactly the group's channels, so
that multiplying that input by a 0/1 gate (a forward pre-hook) is what removing the channels
does. A group also lists the norms its channels pass through before the gate point: those whose
statistics pool over channels (``gLN``, ``cLN``, ``channel_ln``, ``rms_norm``) are recomputed over
the open channels while gates are attached (:mod:`audiosep.pruning.masked_norms`), so removal
equals the gated model exactly for every norm.

The cost of a channel (multiply-accumulates per second of audio) is measured, not assumed:
forward hooks count the rows (frames x sequences x repeats) each gate point really processes
on a probe input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from audiosep.models import ConvTasNet, RESepFormer, SepFormer, TinySepformer
from audiosep.nn.dual_path import transformer_layers


@dataclass
class ChannelGroup:
    """One prunable set of channels.

    Attributes:
        name: the owning module's name (``masker.blocks.3`` or ``...layers.0``).
        size: channels now.
        gate_point: name of the module whose input's channel dim holds the group (``out_conv`` /
            ``ffn.3``).
        channel_dim: that input's channel dim (1 for ``[B, C, M]`` convs, -1 for Linear).
        slices: ``(state-dict key, dim)`` of every tensor that holds the group's channels.
        macs_per_channel: multiply-accumulates per channel per second of audio (measured rows).
        norms: names of the norm modules over the group's channels before the gate point.
    """

    name: str
    size: int
    gate_point: str
    channel_dim: int
    slices: list[tuple[str, int]]
    macs_per_channel: float = 0.0
    norms: list[str] = field(default_factory=list)


def find_groups(model: nn.Module, sample_rate: int) -> list[ChannelGroup]:
    """The prunable groups of ``model``, with their measured cost per channel.

    Raises:
        TypeError: a model with no pruning rule.
    """
    if isinstance(model, ConvTasNet):
        groups = _conv_tasnet_groups(model)
    elif isinstance(model, (SepFormer, RESepFormer, TinySepformer)):
        groups = _ffn_groups(model)
    else:
        raise TypeError(f"no pruning rule for {type(model).__name__}")
    _measure_costs(model, groups, sample_rate)
    return groups


def _keys_with_leading_dim(model: nn.Module, prefix: str, size: int) -> list[tuple[str, int]]:
    """State-dict keys under ``prefix`` whose first dim is ``size`` (norm weights, BN statistics)."""
    return [
        (key, 0) for key, value in model.state_dict().items()
        if key.startswith(prefix) and value.dim() >= 1 and value.shape[0] == size
    ]  # fmt: skip


def _conv_tasnet_groups(model: ConvTasNet) -> list[ChannelGroup]:
    groups = []
    for index, block in enumerate(model.masker.blocks):
        name, size = f"masker.blocks.{index}", block.in_conv.out_channels
        slices = [(f"{name}.in_conv.weight", 0), (f"{name}.in_conv.bias", 0)]
        slices += _keys_with_leading_dim(model, f"{name}.in_norm.", size)
        slices += [(f"{name}.depthwise.weight", 0), (f"{name}.depthwise.bias", 0)]
        slices += _keys_with_leading_dim(model, f"{name}.depthwise_norm.", size)
        slices += [(f"{name}.out_conv.weight", 1)]
        norms = [f"{name}.in_norm", f"{name}.depthwise_norm"]
        groups.append(ChannelGroup(name, size, f"{name}.out_conv", 1, slices, norms=norms))
    return groups


def _ffn_groups(model: nn.Module) -> list[ChannelGroup]:
    names = {id(module): name for name, module in model.named_modules()}
    groups = []
    for layer in transformer_layers(model):
        name = names[id(layer)]
        slices = [(f"{name}.ffn.0.weight", 0), (f"{name}.ffn.0.bias", 0), (f"{name}.ffn.3.weight", 1)]
        groups.append(ChannelGroup(name, layer.ffn_dim, f"{name}.ffn.3", -1, slices))
    return groups


def _channel_macs(model: nn.Module, group: ChannelGroup) -> int:
    """Multiply-accumulates one channel of ``group`` costs per row its gate point processes."""
    owner = model.get_submodule(group.name)
    if isinstance(model, ConvTasNet):
        return owner.in_conv.in_channels + owner.depthwise.kernel_size[0] + owner.out_conv.out_channels
    return owner.ffn[0].in_features + owner.ffn[3].out_features


@torch.no_grad()
def _measure_costs(model: nn.Module, groups: list[ChannelGroup], sample_rate: int) -> None:
    """Fill ``macs_per_channel``: rows each gate point sees on one second of audio, times MACs per row."""
    rows = {group.gate_point: 0 for group in groups}
    channel_dims = {group.gate_point: group.channel_dim for group in groups}

    def counter(name: str):
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0]
            rows[name] += x.numel() // x.shape[channel_dims[name]]

        return hook

    handles = [model.get_submodule(point).register_forward_pre_hook(counter(point)) for point in rows]
    try:
        was_training = model.training
        model.eval()(torch.zeros(1, sample_rate))
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    for group in groups:
        group.macs_per_channel = float(rows[group.gate_point] * _channel_macs(model, group))


def total_macs(model: nn.Module, sample_rate: int) -> float:
    """Multiply-accumulates of one eval-mode forward pass on one second of audio (attention included)."""
    from audiosep.cost import count_macs

    was_training = model.training
    macs = count_macs(model.eval(), torch.zeros(1, sample_rate))
    model.train(was_training)
    return macs
