"""Dual-path machinery shared by SepFormer, RE-SepFormer and Tiny-Sepformer.

A dual-path model cuts a long feature sequence into chunks and alternates an *intra-chunk*
model (along the frames of each chunk: local structure) with an *inter-chunk* model (along the
chunks: global structure), so that no single sequence is longer than about ``sqrt(L)``.

Everything here is channels-last: features are ``[B, L, N]`` and chunked features
``[B, S, K, N]`` (chunk-major), the layout in which transformer layers need no copies.
Shape legend: ``B`` batch, ``L`` frames, ``N`` channels, ``S`` chunks, ``K`` chunk size,
``P = K / 2`` hop of overlapping chunks.

Padding follows SpeechBrain exactly (it changes which chunks exist, hence what the inter-chunk
attention sees), so that SpeechBrain checkpoints give the same outputs here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiosep.nn.attention import TRANSFORMER_NORM_EPS
from audiosep.nn.norms import CumulativeLayerNorm, NormName, build_norm, canonical_norm_name

MASKNET_NORM_EPS = 1e-8  # SpeechBrain's select_norm eps (its "ln" is GroupNorm(1, C) = our global_ln)


def sinusoidal_encoding(
    length: int, dim: int, device: torch.device | None = None, dtype: torch.dtype | None = None, start: int = 0
) -> Tensor:
    """Absolute position code ``[L, D]`` of positions ``start .. start + L - 1``: ``sin`` on even channels,
    ``cos`` on odd ones (``start`` lets a stream code one new position with the numbers of the whole).

    ``PE[t, 2i] = sin(t / 10000^(2i/D))`` and ``PE[t, 2i+1] = cos(t / 10000^(2i/D))``
    (Vaswani et al. 2017), computed for any length (no maximum).

    Raises:
        ValueError: odd ``dim``.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal positions need an even width, got {dim}")
    position = torch.arange(start, start + length, device=device, dtype=torch.float32).unsqueeze(1)  # [L, 1]
    inv_freq = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )  # [D/2]
    angles = position * inv_freq  # [L, D/2]
    # [L, D/2, 2] -> [L, D]: interleave sin and cos.
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1).to(dtype)


def _inference_rows(device: torch.device) -> int:
    """Rows (sequences x length) per inference pass: cache-sized on CPU, large on accelerators."""
    return 4096 if device.type == "cpu" else 262144


def stack_widths(value: int | Sequence[int], stack_sizes: Sequence[int], name: str) -> list[list[int]]:
    """Per-layer widths grouped by stack: ``value`` is one int for all layers or one per layer.

    Why: a channel-pruned model has a different width in every layer, and its constructor must
    take them so that a checkpoint rebuilds it from ``init_args`` alone.

    Args:
        value: one width for every layer, or ``sum(stack_sizes)`` widths in layer order.
        stack_sizes: layers of each stack, in order.
        name: the constructor argument, quoted in errors.

    Returns:
        One list of widths per stack.

    Raises:
        ValueError: a list of another length, or a width below 1.

    Example:
        >>> stack_widths(64, [1, 2], "ffn_dim"), stack_widths([8, 16, 4], [1, 2], "ffn_dim")
        ([[64], [64, 64]], [[8], [16, 4]])
    """
    num_layers = sum(stack_sizes)
    widths = [value] * num_layers if isinstance(value, int) else list(value)
    if len(widths) != num_layers:
        raise ValueError(f"{name} needs one width per layer: expected {num_layers}, got {len(widths)}")
    if any(int(width) < 1 for width in widths):
        raise ValueError(f"{name} widths must be >= 1, got {widths}")
    remaining = iter(int(width) for width in widths)
    return [[next(remaining) for _ in range(size)] for size in stack_sizes]


class SequenceStack(nn.Module):
    """Position code, a stack of sequence layers, final LayerNorm: ``[B, L, D] -> [B, L, D]``.

    This is the intra- or inter-chunk model. With ``repeats > 1`` every layer is applied
    ``repeats`` times in a row with the same weights (parameter sharing, as Tiny-Sepformer).

    Args:
        layers: the layers, each ``[B, L, D] -> [B, L, D]``.
        dim: model width ``D``.
        repeats: how many times each layer is applied.
    """

    def __init__(self, layers: Sequence[nn.Module], dim: int, repeats: int = 1) -> None:
        super().__init__()
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.layers = nn.ModuleList(layers)
        self.repeats = repeats
        self.norm = nn.LayerNorm(dim, eps=TRANSFORMER_NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, L, D] -> [B, L, D]``; without autograd, long batches go through in slices.

        The sequences are independent, so slicing the batch changes nothing but the working
        set: on CPU a slice of a few thousand rows keeps the layer activations in cache (SepFormer
        on 4 s of audio: about 10 % faster than one pass), and the widest ones (feed-forward
        hidden layer, attention) no longer grow with the input length.
        """
        max_rows = _inference_rows(x.device)
        if torch.is_grad_enabled() or x.shape[0] * x.shape[1] <= max_rows:
            return self._forward(x)
        sequences = max(1, max_rows // x.shape[1])
        return torch.cat([self._forward(part) for part in x.split(sequences)])

    def _forward(self, x: Tensor) -> Tensor:
        x = x + sinusoidal_encoding(x.shape[1], x.shape[2], x.device, x.dtype)
        for layer in self.layers:
            for _ in range(self.repeats):
                x = layer(x)
        return self.norm(x)


def transformer_layers(model: nn.Module) -> list[nn.Module]:
    """The layers of every :class:`SequenceStack` in ``model``, in ``model.modules()`` order.

    This is the order of per-layer width lists (``ffn_dim``, ``conv_channels``) of the SepFormer
    family, so a pruner can pair ``zip(transformer_layers(model), widths)``. A shared layer
    (Tiny-Sepformer's ``share_layers``) is listed once, for the stack that owns it.

    Example:
        >>> [layer.ffn[0].out_features for layer in transformer_layers(model)]  # doctest: +SKIP
        [32, 24, 40, 16]
    """
    stacks = [module for module in model.modules() if isinstance(module, SequenceStack)]
    return [layer for stack in stacks for layer in stack.layers]


def build_masknet_norm(name: NormName, channels: int) -> nn.Module:
    """The registry norm ``name`` with SpeechBrain's eps 1e-8 (BatchNorm keeps its own 1e-5)."""
    eps = None if canonical_norm_name(name) == "batch_norm" else MASKNET_NORM_EPS
    return build_norm(name, channels, eps=eps)


def norm_channels_last(norm: nn.Module, x: Tensor) -> Tensor:
    """Apply a registry norm (built for ``[B, C, T]``) to channels-last ``[B, ..., C]``.

    The middle dims are flattened into one time axis; every registry norm's statistics are then
    the same as over ``[B, C, K, S]`` (chunk-major order for the cumulative one). The result is
    contiguous channels-last. The ``none`` norm (an ``nn.Identity``) returns ``x`` as it is: no
    layout round trip for a norm that does nothing (e.g. one folded away at inference).
    """
    if isinstance(norm, nn.Identity):
        return x
    shape = x.shape
    # [B, ..., C] -> [B, C, T]
    y = norm(x.reshape(shape[0], -1, shape[-1]).transpose(1, 2))
    # Back to a contiguous [B, ..., C]: the layout every following layer reads fastest.
    return y.transpose(1, 2).contiguous().view(shape)


def overlap_right_padding(length: int, chunk_size: int) -> int:
    """Zeros appended after ``length`` frames before 50 %-overlap chunking (SpeechBrain's rule).

    The smallest positive amount making ``length + pad + K/2`` a multiple of ``K``; note that it
    is ``K`` (a whole extra chunk pair), not 0, when the length already fits.
    """
    return chunk_size - (chunk_size // 2 + length) % chunk_size


def overlapping_chunks(x: Tensor, chunk_size: int) -> Tensor:
    """Cut ``[B, L, N]`` into chunks of ``K`` frames with hop ``K/2``: ``[B, S, K, N]``.

    The sequence is padded with ``K/2`` zeros in front and
    ``K/2 + overlap_right_padding(L, K)`` behind, so every frame lies in exactly two chunks.

    Raises:
        ValueError: odd or non-positive ``chunk_size``.
    """
    if chunk_size < 2 or chunk_size % 2:
        raise ValueError(f"chunk_size must be even and >= 2 for 50 % overlap, got {chunk_size}")
    batch, length, channels = x.shape
    hop = chunk_size // 2
    padded = F.pad(x, (0, 0, hop, hop + overlap_right_padding(length, chunk_size)))
    blocks = padded.view(batch, -1, hop, channels)  # [B, S + 1, P, N]
    # Chunk s = hop blocks s and s + 1.
    return torch.cat((blocks[:, :-1], blocks[:, 1:]), dim=2)  # [B, S, K, N]


def overlap_add(chunks: Tensor, length: int) -> Tensor:
    """Inverse layout of :func:`overlapping_chunks`: sum the overlapping halves, ``[B, L, N]``.

    No window and no normalisation (as SepFormer): every frame is the sum of its two chunks.
    """
    batch, num_chunks, chunk_size, channels = chunks.shape
    hop = chunk_size // 2
    halves = chunks.view(batch, num_chunks, 2, hop, channels)  # [B, S, 2, P, N]
    # Hop block s of the padded sequence = first half of chunk s + second half of chunk s - 1.
    blocks = F.pad(halves[:, :, 0], (0, 0, 0, 0, 0, 1)) + F.pad(halves[:, :, 1], (0, 0, 0, 0, 1, 0))
    return blocks.view(batch, -1, channels)[:, hop : hop + length]  # [B, L, N]


def non_overlapping_chunks(x: Tensor, chunk_size: int) -> Tensor:
    """Cut ``[B, L, N]`` into ``S = L // K + 1`` chunks of ``K`` frames: ``[B, S, K, N]``.

    Pads ``K - L % K`` zeros at the end: always at least one frame, as SpeechBrain's
    RE-SepFormer does (its inter-chunk model sees that chunk too).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    batch, length, channels = x.shape
    padded = F.pad(x, (0, 0, 0, chunk_size - length % chunk_size))
    return padded.view(batch, -1, chunk_size, channels)


class DualPathBlock(nn.Module):
    """One intra-chunk pass then one inter-chunk pass, each normalised and residual.

    ``x = norm_intra(intra(x)) + x`` along the frames of each chunk, then
    ``x = norm_inter(inter(x)) + x`` along the chunks (SepFormer with skip-around-intra).

    ``cumulative_ln`` is refused: on overlapping chunks laid out chunk by chunk it is not causal.

    Args:
        intra: sequence model over ``[B*S, K, N]``.
        inter: sequence model over ``[B*K, S, N]``.
        intra_norm: registry norm over ``[B, N, T]`` applied to the intra output.
        inter_norm: registry norm applied to the inter output.
    """

    def __init__(self, intra: nn.Module, inter: nn.Module, intra_norm: nn.Module, inter_norm: nn.Module):
        super().__init__()
        if isinstance(intra_norm, CumulativeLayerNorm) or isinstance(inter_norm, CumulativeLayerNorm):
            # The chunks overlap and are laid out chunk by chunk: "frames so far" would mix in
            # later frames and count every frame twice, so the norm would not be causal in time.
            raise ValueError(
                "cumulative_ln (cLN) is not causal on 50 %-overlap dual-path chunks (chunk order is not "
                "time order); use channel_ln, global_ln or a batch-statistics norm"
            )
        self.intra = intra
        self.inter = inter
        self.intra_norm = intra_norm
        self.inter_norm = inter_norm

    def forward(self, x: Tensor) -> Tensor:
        """``[B, S, K, N] -> [B, S, K, N]``."""
        batch, num_chunks, chunk_size, channels = x.shape
        intra = self.intra(x.reshape(batch * num_chunks, chunk_size, channels))
        x = norm_channels_last(self.intra_norm, intra.view_as(x)) + x
        # [B, S, K, N] -> [B*K, S, N]
        inter = self.inter(x.transpose(1, 2).reshape(batch * chunk_size, num_chunks, channels))
        inter = inter.view(batch, chunk_size, num_chunks, channels).transpose(1, 2)
        return norm_channels_last(self.inter_norm, inter) + x
