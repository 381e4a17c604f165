"""Tiny-Sepformer (Luo et al. 2022, "Tiny-Sepformer: a tiny time-domain transformer network for
speech separation").

Our reading of the paper: the SepFormer pipeline (filterbank, 50 %-overlap dual-path masker,
decoder) keeps its shape; two changes shrink it.

1. **Convolution-attention (CA) layers** replace the transformer layers. After the LayerNorm,
   the channels are split in two paths: one goes through multi-head self-attention (global
   context), the other through a 1-D depthwise-separable convolution (local context: a
   depthwise conv along time, then a pointwise 1x1, no nonlinearity in between); the two
   outputs are concatenated back to full width and added to the input, followed by the usual
   pre-norm feed-forward with residual.
2. **Parameter sharing**: all layers of one intra (or inter) model share one set of weights:
   one CA layer applied ``num_intra_layers`` times (ALBERT-style), so depth costs no parameters.

The paper's exact split and convolution kernel could not be checked here; the preset uses half
of the channels for attention (4 heads of 32) and a kernel of 7 frames, stated rather than
claimed. With SepFormer's sizes otherwise, :func:`tiny_sepformer_base` has 2.85 M parameters,
9.0x fewer than SepFormer's 25.68 M, and 23 % fewer multiply-accumulates.

Shape legend: ``B`` batch, ``L`` length, ``D`` model width.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from audiosep.models.masking import DualPathMasker, MaskingSeparator, dual_path_blocks
from audiosep.nn.attention import TRANSFORMER_NORM_EPS, MultiHeadSelfAttention, feed_forward
from audiosep.nn.dual_path import SequenceStack, stack_widths
from audiosep.nn.norms import NormName


class ConvAttentionLayer(nn.Module):
    """Tiny-Sepformer's CA layer: split attention / depthwise-separable conv paths, then FFN.

    The LayerNorm output splits into ``attention_channels`` and ``Dc = dim - attention_channels``
    conv-path channels. The depthwise conv runs on the first ``conv_channels`` (``k``) of those
    ``Dc``; the pointwise Linear maps ``k`` back to ``Dc``, so the output keeps full width. ``k < Dc``
    is a channel-pruned conv path (the kept channels permuted to the front; the LayerNorm still
    normalises over all ``D``). Every width is read from the layer's own modules, so they may be
    shrunk in place.

    Args:
        dim: model width ``D``.
        attention_channels: channels of the attention path (the rest go to the conv path).
        num_heads: attention heads (dividing ``attention_channels``).
        conv_kernel_size: odd depthwise kernel (``same`` padding).
        ffn_dim: feed-forward width.
        dropout: dropout on attention weights, FFN hidden layer and residual branches.
        conv_channels: ``k``, channels of the depthwise conv (``None``: all ``Dc``).

    Raises:
        ValueError: ``attention_channels`` not in ``(0, dim)``, an even kernel, or
            ``conv_channels`` not in ``[1, Dc]``.
    """

    def __init__(
        self,
        dim: int,
        attention_channels: int,
        num_heads: int,
        conv_kernel_size: int,
        ffn_dim: int,
        dropout: float,
        conv_channels: int | None = None,
    ) -> None:
        super().__init__()
        if not 0 < attention_channels < dim:
            raise ValueError(f"attention_channels must be in (0, {dim}), got {attention_channels}")
        if conv_kernel_size < 1 or conv_kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel_size must be odd, got {conv_kernel_size}")
        conv_path = dim - attention_channels
        kept = conv_path if conv_channels is None else conv_channels
        if not 1 <= kept <= conv_path:
            raise ValueError(
                f"conv_channels must be in [1, dim - attention_channels = {conv_path}], got {kept}"
            )
        self.norm1 = nn.LayerNorm(dim, eps=TRANSFORMER_NORM_EPS)
        self.attention = MultiHeadSelfAttention(attention_channels, num_heads, dropout)
        self.depthwise = nn.Conv1d(kept, kept, conv_kernel_size, padding=conv_kernel_size // 2, groups=kept)
        self.pointwise = nn.Linear(kept, conv_path)
        self.norm2 = nn.LayerNorm(dim, eps=TRANSFORMER_NORM_EPS)
        self.ffn = feed_forward(dim, ffn_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    @property
    def split(self) -> tuple[int, int]:
        """``(attention channels, Dc)``: how the LayerNorm output splits, read from the weights."""
        return self.attention.out.weight.shape[0], self.pointwise.weight.shape[0]

    @property
    def conv_channels(self) -> int:
        """``k``, the channels of the depthwise conv."""
        return self.depthwise.weight.shape[0]

    @property
    def ffn_dim(self) -> int:
        """Feed-forward width, read from the FFN's first Linear."""
        return self.ffn[0].weight.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        """``[B, L, D] -> [B, L, D]``."""
        attention_in, conv_in = self.norm1(x).split(self.split, dim=-1)
        attended = self.attention(attention_in)
        # Depthwise conv along time on the first k conv channels: [B, L, k] -> [B, k, L] -> [B, L, k];
        # pointwise [B, L, k] -> [B, L, Dc].
        kept = conv_in[..., : self.conv_channels].transpose(1, 2)
        convolved = self.pointwise(self.depthwise(kept).transpose(1, 2))
        x = x + self.dropout(torch.cat((attended, convolved), dim=-1))
        return x + self.dropout(self.ffn(self.norm2(x)))


class TinySepformer(MaskingSeparator):
    """Tiny-Sepformer separator: ``forward(mixture [B, T]) -> [B, num_sources, T]``.

    Per-layer widths: the CA layers, in ``model.modules()`` order (as
    :func:`audiosep.nn.dual_path.transformer_layers` lists them), are block 0's intra layers,
    block 0's inter layers, block 1's intra layers, and so on:
    ``num_blocks * (num_intra_layers + num_inter_layers)`` layers, or with ``share_layers``
    ``2 * num_blocks`` (one shared layer per intra or inter model).

    Args:
        num_sources: number of sources ``C``.
        encoder_channels: filterbank size ``N``.
        kernel_size: filter length in samples (stride is half of it).
        model_channels: width inside the dual-path blocks.
        num_blocks: dual-path blocks.
        num_intra_layers: CA layers (or applications of the shared one) per intra model.
        num_inter_layers: the same for each inter model.
        num_heads: heads of the attention path.
        attention_channels: channels of the attention path; the other
            ``Dc = model_channels - attention_channels`` take the conv path.
        conv_kernel_size: odd depthwise kernel of the conv path.
        ffn_dim: feed-forward width of every layer, or one width per layer in the order above.
        chunk_size: frames per chunk ``K`` (even; 50 % overlap).
        norm: registry norm of the mask network (as SepFormer's ``norm``).
        dropout: dropout in the CA layers.
        share_layers: one shared CA layer per intra/inter model (the paper) or distinct ones.
        conv_channels: channels of each layer's depthwise conv (``1..Dc``; a channel-pruned conv
            path), one int or one per layer in the order above; ``None``: all ``Dc``.

    Raises:
        ValueError: a width list of the wrong length, a width out of range, or an invalid size.
    """

    def __init__(
        self,
        num_sources: int = 2,
        encoder_channels: int = 256,
        kernel_size: int = 16,
        model_channels: int = 256,
        num_blocks: int = 2,
        num_intra_layers: int = 8,
        num_inter_layers: int = 8,
        num_heads: int = 4,
        attention_channels: int = 128,
        conv_kernel_size: int = 7,
        ffn_dim: int | list[int] = 1024,
        chunk_size: int = 250,
        norm: NormName = "global_ln",
        dropout: float = 0.0,
        share_layers: bool = True,
        conv_channels: int | list[int] | None = None,
    ) -> None:
        super().__init__()
        if num_sources < 1:
            raise ValueError(f"num_sources must be >= 1, got {num_sources}")
        self._build_filterbank(encoder_channels, kernel_size)
        # Stacks in order intra_0, inter_0, intra_1, ...; a shared stack holds one layer, repeated.
        depths = [num_intra_layers, num_inter_layers] * num_blocks
        sizes = [1] * len(depths) if share_layers else depths
        repeats = depths if share_layers else [1] * len(depths)
        ffn_dims = stack_widths(ffn_dim, sizes, "ffn_dim")
        conv_dims: list[list[int]] | list[list[None]] = (
            [[None] * size for size in sizes]  # each layer: its whole conv path
            if conv_channels is None
            else stack_widths(conv_channels, sizes, "conv_channels")
        )

        def layer(ffn: int, conv: int | None) -> ConvAttentionLayer:
            return ConvAttentionLayer(
                model_channels, attention_channels, num_heads, conv_kernel_size, ffn, dropout, conv
            )

        stacks = [
            SequenceStack([layer(f, c) for f, c in zip(ffns, convs, strict=True)], model_channels, repeats=r)
            for ffns, convs, r in zip(ffn_dims, conv_dims, repeats, strict=True)
        ]
        blocks = dual_path_blocks(stacks, norm, model_channels)
        self.masker = DualPathMasker(encoder_channels, model_channels, num_sources, chunk_size, norm, blocks)


def tiny_sepformer_base(num_sources: int = 2, **overrides: Any) -> TinySepformer:
    """Tiny-Sepformer with SepFormer's sizes: 2 blocks of 8 shared-weight CA layers per intra/inter
    model, width 256 split 128 attention (4 heads) / 128 conv (kernel 7), FFN 1024, chunks of 250:
    2.85 M parameters (SepFormer: 25.68 M)."""
    return TinySepformer(num_sources=num_sources, **overrides)
