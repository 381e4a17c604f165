"""The encoder -> masks -> decoder frame shared by the SepFormer family, and its dual-path masker.

A learned filterbank (ReLU Conv1d, kernel ``W``, stride ``W/2``) encodes the mixture into
``[B, N, L]``; a mask network estimates one mask per source; a transposed-conv decoder turns the
masked features back into waveforms. :class:`DualPathMasker` is the 50 %-overlap dual-path mask
network of SepFormer and Tiny-Sepformer (they differ only in the layers inside its blocks).

Shape legend: ``B`` batch, ``T`` samples, ``N`` encoder channels, ``L`` frames, ``C`` sources,
``S`` chunks, ``K`` chunk size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiosep.models.base import RebuildableModule
from audiosep.nn.dual_path import (
    DualPathBlock,
    build_masknet_norm,
    overlap_add,
    overlapping_chunks,
    transformer_layers,
)
from audiosep.nn.norms import NormName

__all__ = ["DualPathMasker", "MaskingSeparator", "dual_path_blocks", "frame_padding", "transformer_layers"]


TAILS = ("pad", "drop")  # the samples after the last whole frame: padded into one more, or SpeechBrain's way


def frame_padding(length: int, kernel_size: int, stride: int) -> int:
    """Zeros to append so that frames of ``kernel_size`` with ``stride`` cover ``length`` samples."""
    if length <= kernel_size:
        return kernel_size - length
    return -(length - kernel_size) % stride


class MaskingSeparator(RebuildableModule):
    """Encoder -> masks -> decoder frame of the SepFormer family; subclasses build ``masker``.

    The ``masker`` maps encoder features ``[B, N, L]`` to masks ``[B, C, N, L]``.
    """

    encoder: nn.Conv1d
    decoder: nn.ConvTranspose1d
    masker: nn.Module
    tail: str = "pad"

    def _build_filterbank(self, channels: int, kernel_size: int, tail: str = "pad") -> None:
        if kernel_size < 2 or kernel_size % 2:
            raise ValueError(f"kernel_size must be even and >= 2 (stride is half of it), got {kernel_size}")
        if tail not in TAILS:
            raise ValueError(f"tail must be one of {', '.join(TAILS)}, got {tail!r}")
        self.tail = tail
        stride = kernel_size // 2
        self.encoder = nn.Conv1d(1, channels, kernel_size, stride=stride, bias=False)
        self.decoder = nn.ConvTranspose1d(channels, 1, kernel_size, stride=stride, bias=False)

    def forward(self, mixture: Tensor) -> Tensor:
        """Separate ``mixture [B, T]`` into ``[B, C, T]``.

        Raises:
            ValueError: the input is not ``[B, T]``.
        """
        if mixture.dim() != 2:
            raise ValueError(f"expected a mixture of shape [batch, time], got {tuple(mixture.shape)}")
        length = mixture.shape[-1]
        kernel_size, stride = self.encoder.kernel_size[0], self.encoder.stride[0]
        cover = self.tail == "pad" or length < kernel_size  # "drop": only a signal shorter than a frame is padded
        padded = F.pad(mixture, (0, frame_padding(length, kernel_size, stride) if cover else 0))
        features = F.relu(self.encoder(padded.unsqueeze(1)))  # [B, N, L]
        masked = self.masker(features) * features.unsqueeze(1)  # [B, C, N, L]
        batch, num_sources, channels, frames = masked.shape
        waves = self.decoder(masked.reshape(batch * num_sources, channels, frames))  # [B*C, 1, T']
        # to the input's length: cut ("pad": the frames reach past it) or zeros after the last frame ("drop");
        # one F.pad (a negative pad cuts) so that traced exports follow every length
        return F.pad(waves.view(batch, num_sources, -1), (0, length - waves.shape[-1]))


def dual_path_blocks(stacks: list[nn.Module], norm: NormName, channels: int) -> list[DualPathBlock]:
    """Pair ``[intra_0, inter_0, intra_1, inter_1, ...]`` into blocks with fresh masknet norms.

    Raises:
        ValueError: an odd number of stacks.
    """
    if len(stacks) % 2:
        raise ValueError(f"expected intra/inter pairs of stacks, got {len(stacks)} stacks")
    return [
        DualPathBlock(intra, inter, build_masknet_norm(norm, channels), build_masknet_norm(norm, channels))
        for intra, inter in zip(stacks[::2], stacks[1::2], strict=True)
    ]


class DualPathMasker(nn.Module):
    """SepFormer's mask network around a list of :class:`DualPathBlock`.

    ``norm -> 1x1 bottleneck -> 50 % overlap chunks -> blocks -> PReLU -> 1x1 to C x channels
    -> overlap-add -> tanh(1x1) * sigmoid(1x1) -> 1x1 back to N -> ReLU``.

    Args:
        in_channels: encoder channels ``N``.
        channels: width inside the blocks.
        num_sources: number of masks ``C``.
        chunk_size: ``K`` (even).
        norm: registry name of the input norm (SpeechBrain applies its masknet norm here too).
        blocks: the dual-path blocks.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_sources: int,
        chunk_size: int,
        norm: NormName,
        blocks: list[DualPathBlock],
    ) -> None:
        super().__init__()
        if chunk_size < 2 or chunk_size % 2:
            raise ValueError(f"chunk_size must be even and >= 2, got {chunk_size}")
        self.num_sources = num_sources
        self.chunk_size = chunk_size
        self.norm = build_masknet_norm(norm, in_channels)
        self.bottleneck = nn.Linear(in_channels, channels, bias=False)
        self.blocks = nn.ModuleList(blocks)
        self.prelu = nn.PReLU()
        self.to_sources = nn.Linear(channels, num_sources * channels)
        self.output = nn.Linear(channels, channels)
        self.output_gate = nn.Linear(channels, channels)
        self.to_masks = nn.Linear(channels, in_channels, bias=False)

    def forward(self, features: Tensor) -> Tensor:
        """``[B, N, L] -> masks [B, C, N, L]``."""
        batch, _, frames = features.shape
        x = self.bottleneck(self.norm(features).transpose(1, 2))  # [B, L, N']
        x = overlapping_chunks(x, self.chunk_size)  # [B, S, K, N']
        for block in self.blocks:
            x = block(x)
        x = self.to_sources(self.prelu(x))  # [B, S, K, C*N']
        x = overlap_add(x, frames)  # [B, L, C*N']
        x = x.view(batch, frames, self.num_sources, -1)  # [B, L, C, N']
        x = torch.tanh(self.output(x)) * torch.sigmoid(self.output_gate(x))
        masks = F.relu(self.to_masks(x))  # [B, L, C, N]
        return masks.permute(0, 2, 3, 1)  # [B, C, N, L]
