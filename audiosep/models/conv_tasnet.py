"""Conv-TasNet (Luo & Mesgarani 2019): learned encoder, TCN mask estimator, learned decoder.

Shape legend: ``B`` batch, ``T`` samples, ``S`` sources, ``N`` encoder filters, ``M`` encoder frames,
``L`` encoder kernel (stride ``L // 2``), ``B_c`` bottleneck channels, ``H`` hidden channels,
``Sc`` skip channels, ``P`` depthwise kernel, ``X`` blocks per repeat, ``R`` repeats.

The model is plain: every ``forward`` calls its own ``nn.Conv1d``, ``nn.PReLU`` and norm modules on
``[B, C, M]`` tensors, in training and inference alike, so hooks, pruning and export see every
layer. The CPU fast path (channels-last layout, conv + activation fused into one oneDNN call,
norm affines folded into the next 1x1 conv) is an explicit transform that builds a new module:
:func:`audiosep.optimize.prepare_for_inference`. ``hidden_channels`` may be one width per block,
so a channel-pruned model rebuilds from its ``init_args``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch.nn.functional as F
from torch import Tensor, nn

from audiosep.models.base import RebuildableModule
from audiosep.nn.norms import NormName, build_norm, check_causal_norm

MaskActivation = Literal["sigmoid", "relu", "softmax"]
MASK_ACTIVATIONS: tuple[str, ...] = get_args(MaskActivation)
EncoderActivation = Literal["relu", "linear"]
ENCODER_ACTIVATIONS: tuple[str, ...] = get_args(EncoderActivation)


def depthwise_padding(kernel_size: int, dilation: int, causal: bool) -> tuple[int, int]:
    """Zeros (left, right) around a dilated depthwise conv that keep the frame count."""
    total = dilation * (kernel_size - 1)
    return (total, 0) if causal else (total // 2, total - total // 2)


def overlap_add(frames: Tensor, stride: int) -> Tensor:
    """Sum frames ``[B', L, M]`` spaced ``stride`` apart into ``[B', (M - 1) * stride + L]``.

    Why not ``F.fold``: shifted adds of ``ceil(L / stride)`` stride-long pieces export to ONNX
    with a dynamic length (the legacy exporter cannot translate ``col2im`` then) and cost the
    same. The kernel is zero-padded to a multiple of the stride; the sums are the same.
    """
    batch, kernel, num_frames = frames.shape
    pieces = -(-kernel // stride)  # ceil
    frames = F.pad(frames, (0, 0, 0, pieces * stride - kernel)).view(batch, pieces, stride, num_frames)
    # Piece i of frame m lands on output block m + i.
    blocks = sum(F.pad(frames[:, i], (i, pieces - 1 - i)) for i in range(pieces))  # [B', stride, M + n - 1]
    signal = blocks.transpose(1, 2).reshape(batch, -1)  # [B', (M + n - 1) * stride]
    return signal[:, : (num_frames - 1) * stride + kernel]


class OverlapAddDecoder(nn.ConvTranspose1d):
    """The one-channel transposed-conv decoder ``[B', N, M] -> [B', 1, (M - 1) * stride + L]``.

    Same weight and result as ``nn.ConvTranspose1d(N, 1, L, stride)``; why its own ``forward``:
    with one output channel, ``conv_transpose1d`` is ~25x slower on CPU than a 1x1 conv to the
    ``L`` samples of each frame followed by an overlap-add, in training too.
    """

    def __init__(self, in_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__(in_channels, 1, kernel_size, stride=stride, bias=False)

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        frames = F.conv1d(x, self.weight.squeeze(1).t().unsqueeze(2))  # [B', L, M]
        return overlap_add(frames, self.stride[0]).unsqueeze(1)  # [B', 1, T'']


class ConvBlock(nn.Module):
    """One TCN block: 1x1 conv, PReLU, norm, dilated depthwise conv, PReLU, norm, 1x1 outputs.

    The residual (``H -> B_c``) and skip (``H -> Sc``) 1x1 convs are one fused conv ``out_conv`` whose
    first ``residual_channels`` outputs are the residual and the rest the skip.

    Args:
        bottleneck_channels: B_c, input channels.
        hidden_channels: H.
        residual_channels: B_c, or 0 for the last block when a skip path exists (its residual is unused).
        skip_channels: Sc, or 0 without a skip path.
        kernel_size: P of the depthwise conv.
        dilation: dilation of the depthwise conv.
        norm: registry norm name.
        causal: pad the depthwise conv on the left only.
    """

    def __init__(
        self,
        bottleneck_channels: int,
        hidden_channels: int,
        residual_channels: int,
        skip_channels: int,
        kernel_size: int,
        dilation: int,
        norm: NormName,
        causal: bool,
    ) -> None:
        super().__init__()
        self.residual_channels = residual_channels
        self.skip_channels = skip_channels
        self.padding = depthwise_padding(kernel_size, dilation, causal)
        left, right = self.padding
        self.in_conv = nn.Conv1d(bottleneck_channels, hidden_channels, 1)
        self.in_act = nn.PReLU()
        self.in_norm = build_norm(norm, hidden_channels)
        self.depthwise = nn.Conv1d(
            hidden_channels, hidden_channels, kernel_size, dilation=dilation, groups=hidden_channels,
            padding=left if left == right else 0,
        )  # fmt: skip
        self.depthwise_act = nn.PReLU()
        self.depthwise_norm = build_norm(norm, hidden_channels)
        self.out_conv = nn.Conv1d(hidden_channels, residual_channels + skip_channels, 1)

    def forward(self, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """``[B, B_c, M]`` -> (residual ``[B, B_c, M]`` or None, skip ``[B, Sc, M]`` or None)."""
        h = self.in_norm(self.in_act(self.in_conv(x)))  # [B, H, M]
        left, right = self.padding
        if left != right:  # causal (or even span): pad here; symmetric padding happens in the conv
            h = F.pad(h, (left, right))  # [B, H, M + left + right]
        h = self.depthwise_norm(self.depthwise_act(self.depthwise(h)))
        out = self.out_conv(h)
        residual = out[:, : self.residual_channels] if self.residual_channels else None
        skip = out[:, self.residual_channels :] if self.skip_channels else None
        return residual, skip


class TemporalConvNet(nn.Module):
    """TCN mask estimator: norm + 1x1 bottleneck, R x X dilated blocks, PReLU + 1x1 conv to S x N masks.

    Args:
        see :class:`ConvTasNet` (same names); ``hidden_channels`` holds one H per block;
        ``skip_channels=None`` sums nothing and reads the masks from the residual stream instead.
    """

    def __init__(
        self,
        num_sources: int,
        enc_num_filters: int,
        bottleneck_channels: int,
        hidden_channels: Sequence[int],
        skip_channels: int | None,
        conv_kernel_size: int,
        num_layers: int,
        norm: NormName,
        causal: bool,
        mask_activation: MaskActivation,
    ) -> None:
        super().__init__()
        self.num_sources = num_sources
        self.mask_activation = mask_activation
        self.bottleneck_norm = build_norm(norm, enc_num_filters)
        self.bottleneck_conv = nn.Conv1d(enc_num_filters, bottleneck_channels, 1)
        last = len(hidden_channels) - 1
        self.blocks = nn.ModuleList(
            ConvBlock(
                bottleneck_channels,
                hidden,
                # With a skip path the last block's residual would be computed and never used.
                0 if (skip_channels and index == last) else bottleneck_channels,
                skip_channels or 0,
                conv_kernel_size,
                2 ** (index % num_layers),
                norm,
                causal,
            )
            for index, hidden in enumerate(hidden_channels)
        )
        self.output_prelu = nn.PReLU()
        self.output_conv = nn.Conv1d(skip_channels or bottleneck_channels, num_sources * enc_num_filters, 1)
        self.mask_act = {"sigmoid": nn.Sigmoid(), "relu": nn.ReLU(), "softmax": nn.Softmax(dim=1)}[mask_activation]

    def forward(self, features: Tensor) -> Tensor:
        """Encoder features ``[B, N, M]`` -> masks ``[B, S, N, M]``."""
        x = self.bottleneck_conv(self.bottleneck_norm(features))  # [B, B_c, M]
        masks = self.output_conv(self.output_prelu(run_blocks(self.blocks, x)))  # [B, S*N, M]
        return self.mask_act(masks.unflatten(1, (self.num_sources, -1)))  # [B, S, N, M]


def run_blocks(blocks: Sequence[nn.Module], x: Tensor) -> Tensor:
    """The TCN stream: add each block's residual to ``x``; return the sum of the skips (or ``x``)."""
    skip_sum: Tensor | None = None
    for block in blocks:
        residual, skip = block(x)
        if residual is not None:
            x = x + residual
        if skip is not None:
            skip_sum = skip if skip_sum is None else skip_sum + skip
    return x if skip_sum is None else skip_sum


def tasnet_padding(num_samples: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """Zeros to add (left, right) so that frames of ``kernel_size`` every ``stride`` tile ``num_samples``
    exactly (torchaudio's rule)."""
    is_odd = kernel_size % 2
    num_strides = (num_samples - is_odd + stride - 1) // stride  # ceil, branch-free
    end = num_strides * stride + is_odd - num_samples
    return stride, stride + end


class ConvTasNet(RebuildableModule):
    """Conv-TasNet separator: ``[B, T]`` mixture -> ``[B, S, T]`` sources, any T.

    Paper symbols in brackets. Padding follows torchaudio's ``ConvTasNet`` (``L // 2`` zeros on both
    sides plus up to one stride at the end), so its weights give the same outputs here.

    Args:
        num_sources: S, number of output sources.
        enc_num_filters: N, encoder filters (feature channels).
        enc_kernel_size: L, encoder/decoder window in samples (stride ``L // 2``).
        bottleneck_channels: B, channels of the residual stream (shared by all blocks, since the
            residual connections add; a pruner removes them from every block at once).
        hidden_channels: H, channels inside each block: one int for all, or a list of ``X * R``
            widths, block by block (a channel-pruned model).
        skip_channels: Sc, channels of the skip path; ``None`` for no skip path (masks from the
            residual stream).
        conv_kernel_size: P, depthwise kernel size.
        num_layers: X, blocks per repeat (dilations 1 .. 2**(X-1)).
        num_repeats: R, repeats.
        norm: registry norm name (:data:`audiosep.nn.norms.NORM_NAMES` or an alias such as ``gLN``).
        causal: left-only padding in the depthwise convs; requires a causal norm.
        mask_activation: ``sigmoid``, ``relu`` or ``softmax`` (over sources).
        encoder_activation: ``relu`` (non-negative encoder output, as in TasNet and SpeechBrain's
            encoder) or ``linear`` (torchaudio, Asteroid's default and the authors' code apply none).

    Raises:
        ValueError: unknown norm or mask activation, non-causal norm with ``causal=True``, a
            non-positive size, or a ``hidden_channels`` list of the wrong length.

    Example:
        >>> model = ConvTasNet(enc_num_filters=16, bottleneck_channels=8, hidden_channels=[16, 12],
        ...                    skip_channels=8, num_layers=2, num_repeats=1)
        >>> model(torch.randn(2, 1001)).shape
        torch.Size([2, 2, 1001])
    """

    def __init__(
        self,
        num_sources: int = 2,
        enc_num_filters: int = 512,
        enc_kernel_size: int = 16,
        bottleneck_channels: int = 128,
        hidden_channels: int | list[int] = 512,
        skip_channels: int | None = 128,
        conv_kernel_size: int = 3,
        num_layers: int = 8,
        num_repeats: int = 3,
        norm: NormName = "gLN",
        causal: bool = False,
        mask_activation: MaskActivation = "sigmoid",
        encoder_activation: EncoderActivation = "relu",
    ) -> None:
        super().__init__()
        _check_sizes(
            num_sources=num_sources, enc_num_filters=enc_num_filters, bottleneck_channels=bottleneck_channels,
            skip_channels=1 if skip_channels is None else skip_channels,
            conv_kernel_size=conv_kernel_size, num_layers=num_layers, num_repeats=num_repeats,
        )  # fmt: skip
        if num_layers > MAX_LAYERS:
            raise ValueError(
                f"num_layers must be at most {MAX_LAYERS} (block i is dilated 2**(i % num_layers)), got {num_layers}"
            )
        reach = (conv_kernel_size - 1) * (2**num_layers - 1)  # frames one repeat's padding spans
        if reach > MAX_REPEAT_REACH:
            raise ValueError(f"conv_kernel_size {conv_kernel_size} with num_layers {num_layers} spans {reach} frames "
                             f"per repeat, more than {MAX_REPEAT_REACH} (the papers: 3 and 8, 510 frames)")  # fmt: skip
        hidden = per_block_widths(hidden_channels, num_layers * num_repeats)
        if enc_kernel_size < 2:
            raise ValueError(f"enc_kernel_size must be >= 2 (stride is L // 2), got {enc_kernel_size}")
        if mask_activation not in MASK_ACTIVATIONS:
            raise ValueError(
                f"unknown mask_activation {mask_activation!r}; valid: {', '.join(MASK_ACTIVATIONS)}"
            )
        if encoder_activation not in ENCODER_ACTIVATIONS:
            raise ValueError(
                f"unknown encoder_activation {encoder_activation!r}; valid: {', '.join(ENCODER_ACTIVATIONS)}"
            )
        check_causal_norm(norm, causal)  # also rejects unknown names
        self.num_sources = num_sources
        self.enc_kernel_size = enc_kernel_size
        self.stride = enc_kernel_size // 2
        self.mask_activation = mask_activation
        self.encoder_activation = encoder_activation
        self.encoder = nn.Conv1d(1, enc_num_filters, enc_kernel_size, stride=self.stride, bias=False)
        self.encoder_act = nn.ReLU() if encoder_activation == "relu" else nn.Identity()
        self.masker = TemporalConvNet(
            num_sources, enc_num_filters, bottleneck_channels, hidden, skip_channels,
            conv_kernel_size, num_layers, norm, causal, mask_activation,
        )  # fmt: skip
        self.decoder = OverlapAddDecoder(enc_num_filters, enc_kernel_size, self.stride)

    def padding(self, num_samples: int) -> tuple[int, int]:
        """Zeros to add (left, right) so that the frames tile the signal exactly (torchaudio's rule)."""
        return tasnet_padding(num_samples, self.enc_kernel_size, self.stride)

    def forward(self, mixture: Tensor) -> Tensor:
        """Separate ``mixture`` ``[B, T]`` into ``[B, S, T]``.

        Raises:
            ValueError: ``mixture`` is not 2-D.
        """
        if mixture.dim() != 2:
            raise ValueError(f"ConvTasNet expects a [batch, time] mixture, got shape {tuple(mixture.shape)}")
        batch, num_samples = mixture.shape
        left, right = self.padding(num_samples)
        padded = F.pad(mixture, (left, right)).unsqueeze(1)  # [B, 1, T'']
        features = self.encoder_act(self.encoder(padded))  # [B, N, M]
        masked = self.masker(features) * features.unsqueeze(1)  # [B, S, N, M]
        signal = self.decoder(masked.flatten(0, 1))  # [B*S, 1, T'']
        return signal.view(batch, self.num_sources, -1)[..., left : left + num_samples]


def per_block_widths(widths: int | Sequence[int], num_blocks: int) -> list[int]:
    """One positive width per block from an int (all equal) or a list of ``num_blocks``.

    Raises:
        ValueError: a list of the wrong length or a width that is not a positive int.
    """
    if not isinstance(widths, int | list | tuple):  # 1.5 said "'float' object is not iterable" (reviewer)
        raise ValueError(f"hidden_channels must be a positive int or a list of them, got {widths!r}")
    values = [widths] * num_blocks if isinstance(widths, int) else list(widths)
    if len(values) != num_blocks:
        raise ValueError(f"hidden_channels needs {num_blocks} widths (X * R), got {len(values)}: {values}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"hidden_channels must be positive ints, got {widths!r}")
    return values


MAX_LAYERS = 16  # X: dilations up to 2**15 frames (the papers use X = 8); 2**30 crashed oneDNN's conv
# (P - 1)(2**X - 1): each block pads dilation (P - 1) frames; a 1 MB file of P = 4097 took 2.7 GB for 1 s of audio
MAX_REPEAT_REACH = 1 << 18


def _check_sizes(**sizes: int) -> None:
    """Raise ValueError naming the first size that is not a positive int."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def conv_tasnet_base(num_sources: int = 2, **overrides: object) -> ConvTasNet:
    """The paper's best non-causal configuration: N=512, L=16, B=Sc=128, H=512, P=3, X=8, R=3, gLN.

    About 4.98 M parameters (torchaudio's count; Asteroid's 5.05 M adds an unused last residual conv).
    """
    config: dict[str, object] = dict(
        enc_num_filters=512, enc_kernel_size=16, bottleneck_channels=128, hidden_channels=512,
        skip_channels=128, conv_kernel_size=3, num_layers=8, num_repeats=3, norm="gLN",
    )  # fmt: skip
    config.update(overrides)
    return ConvTasNet(num_sources=num_sources, **config)


def conv_tasnet_demo(num_sources: int = 2, **overrides: object) -> ConvTasNet:
    """The demo recipe's CPU-sized model (``recipes/demo/convtasnet_tiny.yaml``): N=128, L=32,
    B=Sc=64, H=128, X=6, R=2, gLN; 0.33 M parameters in the masker."""
    config: dict[str, object] = dict(
        enc_num_filters=128, enc_kernel_size=32, bottleneck_channels=64, hidden_channels=128,
        skip_channels=64, conv_kernel_size=3, num_layers=6, num_repeats=2, norm="gLN",
    )  # fmt: skip
    config.update(overrides)
    return ConvTasNet(num_sources=num_sources, **config)
