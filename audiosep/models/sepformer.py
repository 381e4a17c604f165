"""SepFormer (Subakan et al. 2021, "Attention is all you need in speech separation").

A learned filterbank (ReLU Conv1d, kernel ``W``, stride ``W/2``) encodes the mixture into
``[B, N, L]``; a dual-path transformer masker estimates one mask per source; a transposed-conv
decoder turns the masked features back into waveforms. The computation matches SpeechBrain's
``Encoder`` + ``Dual_Path_Model`` (``SBTransformerBlock`` intra/inter, ``norm="ln"``,
skip-around-intra, no extra linear layer) + ``Decoder``, so its checkpoints load through
:func:`audiosep.convert.speechbrain.sepformer_from_speechbrain`.

By default the mixture is zero-padded so that the encoder frames cover every sample; SpeechBrain
drops the last ``(T - W) mod (W/2)`` samples and pads the output with zeros, which ``tail="drop"``
reproduces (what converted SpeechBrain models use: the same numbers at every length; with
``"pad"`` only lengths with ``(T - W) mod (W/2) = 0`` give identical outputs).

Shape legend: ``B`` batch, ``T`` samples, ``N`` encoder channels, ``L`` frames, ``C`` sources,
``S`` chunks, ``K`` chunk size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from audiosep.models.masking import DualPathMasker, MaskingSeparator, dual_path_blocks
from audiosep.nn.attention import TransformerLayer
from audiosep.nn.dual_path import SequenceStack, stack_widths
from audiosep.nn.norms import NormName


def transformer_stack(
    dim: int,
    ffn_dims: Sequence[int],
    num_heads: int,
    dropout: float,
    pre_norm: bool,
    causal: bool = False,
) -> SequenceStack:
    """Positional code + one transformer layer per FFN width + LayerNorm (SpeechBrain's SBTransformerBlock)."""
    layers = [TransformerLayer(dim, num_heads, width, dropout, pre_norm, causal) for width in ffn_dims]
    return SequenceStack(layers, dim)


class SepFormer(MaskingSeparator):
    """SepFormer separator: ``forward(mixture [B, T]) -> [B, num_sources, T]``.

    Per-layer widths: the transformer layers, in ``model.modules()`` order (as
    :func:`audiosep.nn.dual_path.transformer_layers` lists them), are block 0's intra layers,
    block 0's inter layers, block 1's intra layers, and so on:
    ``num_blocks * (num_intra_layers + num_inter_layers)`` layers.

    Args:
        num_sources: number of sources ``C``.
        encoder_channels: filterbank size ``N``.
        kernel_size: filter length in samples (stride is half of it).
        model_channels: transformer width (a 1x1 bottleneck maps ``N`` to it).
        num_blocks: dual-path blocks.
        num_intra_layers: transformer layers of each intra-chunk model.
        num_inter_layers: transformer layers of each inter-chunk model.
        num_heads: attention heads.
        ffn_dim: feed-forward width of every layer, or one width per layer in the order above
            (a channel-pruned model).
        chunk_size: frames per chunk ``K`` (even; chunks overlap by half).
        norm: registry norm of the mask network (input, after intra, after inter); SpeechBrain's
            ``"ln"`` is ``global_ln``.
        dropout: transformer dropout.
        pre_norm: pre-norm transformer layers (SepFormer) or post-norm.
        tail: the samples after the last whole encoder frame: ``"pad"`` (zero-padded into one more
            frame, so they are separated too) or ``"drop"`` (SpeechBrain's: not encoded, zeros in the
            output; converted SpeechBrain models use it and give SpeechBrain's numbers at every length).

    Raises:
        ValueError: an ``ffn_dim`` list of the wrong length, or an invalid size.

    Example:
        >>> model = SepFormer(encoder_channels=16, model_channels=16, num_blocks=1, num_intra_layers=1,
        ...                   num_inter_layers=1, num_heads=2, ffn_dim=[32, 24], chunk_size=10)
        >>> model(torch.randn(2, 800)).shape
        torch.Size([2, 2, 800])
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
        num_heads: int = 8,
        ffn_dim: int | list[int] = 1024,
        chunk_size: int = 250,
        norm: NormName = "global_ln",
        dropout: float = 0.0,
        pre_norm: bool = True,
        tail: str = "pad",
    ) -> None:
        super().__init__()
        if num_sources < 1:
            raise ValueError(f"num_sources must be >= 1, got {num_sources}")
        self._build_filterbank(encoder_channels, kernel_size, tail)
        sizes = [num_intra_layers, num_inter_layers] * num_blocks  # intra_0, inter_0, intra_1, ...
        stacks = [
            transformer_stack(model_channels, widths, num_heads, dropout, pre_norm)
            for widths in stack_widths(ffn_dim, sizes, "ffn_dim")
        ]
        blocks = dual_path_blocks(stacks, norm, model_channels)
        self.masker = DualPathMasker(encoder_channels, model_channels, num_sources, chunk_size, norm, blocks)


def sepformer_base(num_sources: int = 2, **overrides: Any) -> SepFormer:
    """The paper's SepFormer (and SpeechBrain's LibriMix/WSJ0-Mix recipe): 25.68 M parameters.

    256 filters of 16 samples (stride 8), 2 blocks of 8 intra + 8 inter pre-norm transformer
    layers (width 256, 8 heads, FFN 1024), chunks of 250 frames with 50 % overlap.
    """
    return SepFormer(num_sources=num_sources, **overrides)
