"""Multiply-accumulates of a forward pass, attention included.

``torch.utils.flop_counter.FlopCounterMode`` counts convolutions and matmuls but not every
attention kernel (on CPU it counts the fused ``scaled_dot_product_attention`` op as zero): the
attention products are added here from their shapes, ``2 * B * H * L_q * L_k * (D / H)``
(``Q K^T`` and ``A V``), in place of whatever the counter attributed to the fused op.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from audiosep.nn.attention import MultiHeadSelfAttention


def count_macs(model: nn.Module, *inputs: Tensor) -> float:
    """MACs of ``model(*inputs)`` (flops / 2), fused attention counted from its shapes."""
    attention = 0.0

    def add_attention(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal attention
        batch, length, dim = args[0].shape
        attention += 2.0 * batch * length * length * module.qkv.out_features / 3

    handles = [m.register_forward_hook(add_attention) for m in model.modules() if isinstance(m, MultiHeadSelfAttention)]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    fused = counter.get_flop_counts().get("Global", {})
    counted_attention = sum(count for op, count in fused.items() if "scaled_dot_product" in str(op))
    return (counter.get_total_flops() - counted_attention) / 2 + attention
