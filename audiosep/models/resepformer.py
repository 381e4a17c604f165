"""RE-SepFormer (Della Libera et al. 2022, "Resource-Efficient Separation Transformer").

SepFormer's filterbank and decoder around a cheaper mask network: the encoded sequence is cut
into *non-overlapping* chunks, an intra-chunk transformer runs on every chunk, and instead of
attending across all frames of all chunks, an inter-chunk transformer runs on one *summary*
per chunk (its mean over frames); its output is added back to every frame of the chunk before
the next intra-chunk pass. The inter-chunk sequence is ``L / K`` long instead of ``2 L``
rows, so memory and time grow far more slowly with the input length than SepFormer's.

The computation matches SpeechBrain's ``ResourceEfficientSeparator`` with
``SBTransformerBlock_wnormandskip`` intra/inter models (``mem_type="av"``) for a batch of one.
For larger batches SpeechBrain's inter-chunk transformer attends across the chunks of *all*
utterances of the batch at once (its summaries are reshaped to one sequence of ``B*S``); here
each utterance only sees its own chunks, so batching never changes an utterance's output.

``causal=True`` masks future positions in both transformers and needs a causal norm. As in
SpeechBrain, a chunk's summary is the mean of all its frames, so the output at a frame may
depend on the input up to the end of its chunk: the algorithmic latency is one chunk
(``chunk_size`` frames, 150 ms at 8 kHz with the paper's sizes), never more.

Shape legend: ``B`` batch, ``N`` channels, ``L`` frames, ``S`` chunks, ``K`` chunk size,
``C`` sources.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from audiosep.models.masking import MaskingSeparator
from audiosep.models.sepformer import transformer_stack
from audiosep.nn.dual_path import build_masknet_norm, non_overlapping_chunks, norm_channels_last, stack_widths
from audiosep.nn.norms import NormName, check_causal_norm


class ChunkSummaryMasker(nn.Module):
    """RE-SepFormer's mask network: ``[B, N, L] -> masks [B, C, N, L]``.

    Each block: ``x = norm(intra(x)) + x`` per chunk; between blocks, the chunk means go through
    ``m = norm(inter(m)) + m`` and are added to every frame of their chunk. The masks are
    ``ReLU(W PReLU(x))``.

    Args:
        channels: width ``N``.
        num_sources: masks ``C``.
        chunk_size: frames per chunk ``K``.
        num_blocks: intra-chunk passes.
        num_intra_layers: transformer layers per intra stack.
        num_inter_layers: transformer layers per inter stack.
        num_heads: attention heads.
        ffn_dim: one feed-forward width, or one per layer: all intra layers (block by block),
            then all inter layers (``model.modules()`` order).
        norm: registry norm after each stack.
        dropout: transformer dropout.
        pre_norm: pre-norm transformer layers.
        causal: causal attention.
    """

    def __init__(
        self,
        channels: int,
        num_sources: int,
        chunk_size: int,
        num_blocks: int,
        num_intra_layers: int,
        num_inter_layers: int,
        num_heads: int,
        ffn_dim: int | list[int],
        norm: NormName,
        dropout: float,
        pre_norm: bool,
        causal: bool,
    ) -> None:
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_sources = num_sources
        self.chunk_size = chunk_size

        # modules() order: every intra stack, then every inter stack.
        sizes = [num_intra_layers] * num_blocks + [num_inter_layers] * (num_blocks - 1)
        stacks = [
            transformer_stack(channels, widths, num_heads, dropout, pre_norm, causal)
            for widths in stack_widths(ffn_dim, sizes, "ffn_dim")
        ]
        self.intra = nn.ModuleList(stacks[:num_blocks])
        self.intra_norms = nn.ModuleList(build_masknet_norm(norm, channels) for _ in range(num_blocks))
        self.inter = nn.ModuleList(stacks[num_blocks:])
        self.inter_norms = nn.ModuleList(build_masknet_norm(norm, channels) for _ in range(num_blocks - 1))
        self.prelu = nn.PReLU()
        self.to_masks = nn.Linear(channels, num_sources * channels)

    def _chunk_memory(self, index: int, x: Tensor) -> Tensor:
        """Inter-chunk transformer over chunk means: ``[B, S, K, N] -> [B, S, 1, N]``."""
        summary = x.mean(dim=2)  # [B, S, N]
        memory = norm_channels_last(self.inter_norms[index], self.inter[index](summary)) + summary
        return memory.unsqueeze(2)

    def forward(self, features: Tensor) -> Tensor:
        """``[B, N, L] -> masks [B, C, N, L]``."""
        batch, channels, frames = features.shape
        x = non_overlapping_chunks(features.transpose(1, 2), self.chunk_size)  # [B, S, K, N]
        num_chunks = x.shape[1]
        for index, (intra, norm) in enumerate(zip(self.intra, self.intra_norms, strict=True)):
            if index > 0:
                x = x + self._chunk_memory(index - 1, x)
            rows = x.reshape(batch * num_chunks, self.chunk_size, channels)  # [B*S, K, N]
            x = (norm_channels_last(norm, intra(rows)) + rows).view_as(x)
        x = x.view(batch, -1, channels)[:, :frames]  # [B, L, N]
        masks = F.relu(self.to_masks(self.prelu(x)))  # [B, L, C*N]
        return masks.view(batch, frames, self.num_sources, channels).permute(0, 2, 3, 1)  # [B, C, N, L]


class RESepFormer(MaskingSeparator):
    """RE-SepFormer separator: ``forward(mixture [B, T]) -> [B, num_sources, T]``.

    Args:
        num_sources: number of sources ``C``.
        encoder_channels: filterbank size and transformer width ``N``.
        kernel_size: filter length in samples (stride is half of it).
        num_blocks: intra-chunk passes (an inter-chunk pass sits between two of them).
        num_intra_layers: transformer layers of each intra-chunk model.
        num_inter_layers: transformer layers of each inter-chunk model.
        num_heads: attention heads.
        ffn_dim: feed-forward width of every layer, or one width per layer (a channel-pruned
            model) in ``model.modules()`` order, as
            :func:`audiosep.nn.dual_path.transformer_layers` lists them: the intra layers of
            block 0, 1, ..., then the inter layers of inter pass 0, 1, ...:
            ``num_blocks * num_intra_layers + (num_blocks - 1) * num_inter_layers`` layers.
        chunk_size: frames per (non-overlapping) chunk ``K``.
        norm: registry norm after each transformer stack (SpeechBrain's ``gln`` is
            ``global_ln``, its ``cln`` is ``channel_ln``).
        causal: causal attention (latency: one chunk, see the module docstring); needs a
            causal norm.
        dropout: transformer dropout.
        pre_norm: pre-norm transformer layers.
        tail: the samples after the last whole encoder frame: ``"pad"`` (zero-padded into one more
            frame, so they are separated too) or ``"drop"`` (SpeechBrain's: not encoded, zeros in the
            output; converted SpeechBrain models use it and give SpeechBrain's numbers at every length).

    Raises:
        ValueError: a non-causal norm with ``causal=True``, an ``ffn_dim`` list of the wrong
            length, or an invalid size.
    """

    def __init__(
        self,
        num_sources: int = 2,
        encoder_channels: int = 128,
        kernel_size: int = 16,
        num_blocks: int = 2,
        num_intra_layers: int = 8,
        num_inter_layers: int = 8,
        num_heads: int = 8,
        ffn_dim: int | list[int] = 1024,
        chunk_size: int = 150,
        norm: NormName = "global_ln",
        causal: bool = False,
        dropout: float = 0.0,
        pre_norm: bool = True,
        tail: str = "pad",
    ) -> None:
        super().__init__()
        check_causal_norm(norm, causal)
        if num_sources < 1 or chunk_size < 1:
            raise ValueError(f"num_sources and chunk_size must be >= 1, got {num_sources}, {chunk_size}")
        self._build_filterbank(encoder_channels, kernel_size, tail)
        self.masker = ChunkSummaryMasker(
            encoder_channels,
            num_sources,
            chunk_size,
            num_blocks,
            num_intra_layers,
            num_inter_layers,
            num_heads,
            ffn_dim,
            norm,
            dropout,
            pre_norm,
            causal,
        )


def resepformer_base(
    num_sources: int = 2, causal: bool = False, norm: NormName | None = None, **overrides: Any
) -> RESepFormer:
    """The paper's RE-SepFormer (SpeechBrain's WSJ0-Mix recipe): 7.96 M parameters.

    128 filters of 16 samples (stride 8), chunks of 150 frames, 2 intra passes and 1 inter pass
    of 8 pre-norm transformer layers (width 128, 8 heads, FFN 1024). ``norm`` defaults to
    ``global_ln`` (non-causal) or ``channel_ln`` (causal).
    """
    if norm is None:
        norm = "channel_ln" if causal else "global_ln"
    return RESepFormer(num_sources=num_sources, causal=causal, norm=norm, **overrides)
