"""Conv-TasNet (Luo & Mesgarani 2019): learned encoder, TCN mask estimator, learned decoder.

Shape legend: ``B`` batch, ``T`` samples, ``S`` sources, ``N`` encoder filters, ``M`` encoder frames,
``L`` encoder kernel (stride ``L // 2``), ``B_c`` bottleneck channels, ``H`` hidden channels,
``Sc`` skip channels, ``P`` depthwise kernel, ``X`` blocks per repeat, ``R`` repeats.

Speed (the maths is the paper's; parameters keep the plain ``Conv1d`` layout, so state dicts stay
readable and convertible):

- the masker runs on channels-last ``[B, C, M, 1]`` tensors (physically ``[B, M, C]``): on CPU,
  oneDNN runs a 1x1 convolution about twice as fast, and GroupNorm several times faster, than on
  ``[B, C, M]``;
- in CPU float32 inference each conv and the activation after it are one oneDNN call
  (:func:`_fused_inference`);
- the decoder is a 1x1 conv plus an overlap-add, not a one-channel ``conv_transpose1d``.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiosep.models.base import RebuildableModule
from audiosep.nn.norms import BatchNorm, CumulativeLayerNorm, build_norm, check_causal_norm

MaskActivation = Literal["sigmoid", "relu", "softmax"]
MASK_ACTIVATIONS: tuple[str, ...] = get_args(MaskActivation)
EncoderActivation = Literal["relu", "linear"]
ENCODER_ACTIVATIONS: tuple[str, ...] = get_args(EncoderActivation)
Activation = Literal["none", "prelu", "sigmoid", "relu"]
FUSED_CPU_INFERENCE = True  # see _fused_inference


def _time_major_to_4d(x: Tensor) -> Tensor:
    """View a contiguous ``[B, M, C]`` tensor as a channels-last ``[B, C, M, 1]`` tensor (no copy)."""
    return x.unsqueeze(2).permute(0, 3, 1, 2)  # [B, M, 1, C] -> [B, C, M, 1]


def _apply_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """Apply a registry norm to a channels-last ``[B, C, M, 1]`` tensor; the result is channels-last."""
    if isinstance(norm, CumulativeLayerNorm):  # defined on [B, C, T] only
        return _time_major_to_4d(norm(x.squeeze(3)).transpose(1, 2))
    if torch.is_grad_enabled():  # training runs channels-first (see _conv)
        return norm(x)
    # A no-op for every norm but BatchNorm, whose 4-D path returns a channels-first tensor.
    return norm(x).contiguous(memory_format=torch.channels_last)


def _fused_inference(x: Tensor) -> bool:
    """Whether convs may run as single oneDNN calls with fused activations (CPU float32 inference).

    Why: each fused activation saves a full read and write of the activation tensor, and the
    direct oneDNN call also avoids PyTorch's slow 1x1-conv path when it runs on one thread.
    """
    return (
        FUSED_CPU_INFERENCE
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and not torch.compiler.is_compiling()
    )


def _conv(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    activation: Activation = "none",
    slope: Tensor | None = None,
    padding: int = 0,
    dilation: int = 1,
    groups: int = 1,
) -> Tensor:
    """``activation(conv(x))`` along time for a channels-last ``[B, C_in, M, 1]`` tensor.

    Args:
        weight: ``Conv1d`` weight ``[C_out, C_in / groups, K]``.
        activation: ``none``, ``prelu`` (one-parameter, ``slope``), ``sigmoid`` or ``relu``.
        padding: zeros on both ends of the time axis.

    Returns:
        ``[B, C_out, M', 1]``, channels-last.
    """
    if torch.is_grad_enabled():
        # Training: channels-last conv2d backward falls back to slow kernels on CPU (dilated
        # depthwise) and is ~1.4x slower per step than plain conv1d on [B, C, M]; so train in 3-D.
        y = F.conv1d(x.squeeze(3), weight, bias, padding=padding, dilation=dilation, groups=groups).unsqueeze(3)
    elif _fused_inference(x):
        # A one-parameter PReLU with slope a is exactly leaky ReLU with negative_slope=a.
        attr, scalars = ("leaky_relu", [slope.item()]) if activation == "prelu" else (activation, [])
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight.unsqueeze(3), bias, [padding, 0], [1, 1], [dilation, 1], groups, attr, scalars, ""
        )  # fmt: skip
    else:
        weight = weight.unsqueeze(3)  # [C_out, C_in / groups, K, 1]
        y = F.conv2d(x, weight, bias, padding=(padding, 0), dilation=(dilation, 1), groups=groups)
    if activation == "prelu":
        return F.prelu(y, slope)
    if activation == "sigmoid":
        return torch.sigmoid(y)
    return torch.relu(y) if activation == "relu" else y


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
        norm: str,
        causal: bool,
    ) -> None:
        super().__init__()
        self.residual_channels = residual_channels
        self.skip_channels = skip_channels
        self.dilation = dilation
        total_padding = dilation * (kernel_size - 1)
        self.padding = (
            (total_padding, 0) if causal else (total_padding // 2, total_padding - total_padding // 2)
        )
        self.in_conv = nn.Conv1d(bottleneck_channels, hidden_channels, 1)
        self.in_act = nn.PReLU()
        self.in_norm = build_norm(norm, hidden_channels)
        self.depthwise = nn.Conv1d(
            hidden_channels, hidden_channels, kernel_size, dilation=dilation, groups=hidden_channels
        )
        self.depthwise_act = nn.PReLU()
        self.depthwise_norm = build_norm(norm, hidden_channels)
        self.out_conv = nn.Conv1d(hidden_channels, residual_channels + skip_channels, 1)

    def forward(self, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """``[B, B_c, M, 1]`` -> (residual ``[B, B_c, M, 1]`` or None, skip ``[B, Sc, M, 1]`` or None)."""
        h = _conv(x, self.in_conv.weight, self.in_conv.bias, "prelu", self.in_act.weight)
        h = _apply_norm(self.in_norm, h)
        left, right = self.padding
        if left != right:  # causal: pad the past only; symmetric padding happens inside the conv
            h = F.pad(h, (0, 0, left, right))  # [B, H, M + left + right, 1]
            left = 0
        dw = self.depthwise
        h = _conv(h, dw.weight, dw.bias, "prelu", self.depthwise_act.weight, left, self.dilation, dw.groups)
        out = _conv(_apply_norm(self.depthwise_norm, h), self.out_conv.weight, self.out_conv.bias)
        residual = out[:, : self.residual_channels] if self.residual_channels else None
        skip = out[:, self.residual_channels :] if self.skip_channels else None
        return residual, skip


class TemporalConvNet(nn.Module):
    """TCN mask estimator: norm + 1x1 bottleneck, R x X dilated blocks, PReLU + 1x1 conv to S x N masks.

    Args:
        see :class:`ConvTasNet` (same names); ``skip_channels=None`` sums nothing and reads the masks
        from the residual stream instead.
    """

    def __init__(
        self,
        num_sources: int,
        enc_num_filters: int,
        bottleneck_channels: int,
        hidden_channels: int,
        skip_channels: int | None,
        conv_kernel_size: int,
        num_layers: int,
        num_repeats: int,
        norm: str,
        causal: bool,
        mask_activation: MaskActivation,
    ) -> None:
        super().__init__()
        self.num_sources = num_sources
        self.mask_activation = mask_activation
        self.bottleneck_norm = build_norm(norm, enc_num_filters)
        self.bottleneck_conv = nn.Conv1d(enc_num_filters, bottleneck_channels, 1)
        num_blocks = num_layers * num_repeats
        self.blocks = nn.ModuleList(
            ConvBlock(
                bottleneck_channels,
                hidden_channels,
                # With a skip path the last block's residual would be computed and never used.
                0 if (skip_channels and index == num_blocks - 1) else bottleneck_channels,
                skip_channels or 0,
                conv_kernel_size,
                2 ** (index % num_layers),
                norm,
                causal,
            )
            for index in range(num_blocks)
        )
        self.output_prelu = nn.PReLU()
        self.output_conv = nn.Conv1d(skip_channels or bottleneck_channels, num_sources * enc_num_filters, 1)

    def forward(self, features: Tensor) -> Tensor:
        """Encoder features ``[B, N, M, 1]`` (channels-last) -> masks ``[B, M, S, N]``."""
        bottleneck = self.bottleneck_conv
        x = _conv(_apply_norm(self.bottleneck_norm, features), bottleneck.weight, bottleneck.bias)
        skip_sum: Tensor | None = None
        for block in self.blocks:
            residual, skip = block(x)
            if residual is not None:
                x = x + residual
            if skip is not None:
                skip_sum = skip if skip_sum is None else skip_sum + skip
        out = F.prelu(x if skip_sum is None else skip_sum, self.output_prelu.weight)
        activation = "none" if self.mask_activation == "softmax" else self.mask_activation
        masks = _conv(out, self.output_conv.weight, self.output_conv.bias, activation)  # [B, S*N, M, 1]
        masks = masks.permute(0, 2, 3, 1).squeeze(2).unflatten(2, (self.num_sources, -1))  # [B, M, S, N]
        return torch.softmax(masks, dim=2) if self.mask_activation == "softmax" else masks


class ConvTasNet(RebuildableModule):
    """Conv-TasNet separator: ``[B, T]`` mixture -> ``[B, S, T]`` sources, any T.

    Paper symbols in brackets. Padding follows torchaudio's ``ConvTasNet`` (``L // 2`` zeros on both
    sides plus up to one stride at the end), so its weights give the same outputs here.

    Args:
        num_sources: S, number of output sources.
        enc_num_filters: N, encoder filters (feature channels).
        enc_kernel_size: L, encoder/decoder window in samples (stride ``L // 2``).
        bottleneck_channels: B, channels of the residual stream.
        hidden_channels: H, channels inside each block.
        skip_channels: Sc, channels of the skip path; ``None`` for no skip path (masks from the
            residual stream).
        conv_kernel_size: P, depthwise kernel size.
        num_layers: X, blocks per repeat (dilations 1 .. 2**(X-1)).
        num_repeats: R, repeats.
        norm: registry norm name (:data:`audiosep.nn.norms.NORM_NAMES` or an alias such as ``gLN``).
        causal: left-only padding in the depthwise convs; requires a causal norm.
        mask_activation: ``sigmoid``, ``relu`` or ``softmax`` (over sources).
        encoder_activation: ``relu`` (non-negative encoder output, as in TasNet, Asteroid and
            SpeechBrain) or ``linear`` (torchaudio and the authors' code apply none).

    Raises:
        ValueError: unknown norm or mask activation, non-causal norm with ``causal=True``, or a
            non-positive size.

    Example:
        >>> model = ConvTasNet(enc_num_filters=16, bottleneck_channels=8, hidden_channels=16,
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
        hidden_channels: int = 512,
        skip_channels: int | None = 128,
        conv_kernel_size: int = 3,
        num_layers: int = 8,
        num_repeats: int = 3,
        norm: str = "gLN",
        causal: bool = False,
        mask_activation: MaskActivation = "sigmoid",
        encoder_activation: EncoderActivation = "relu",
    ) -> None:
        super().__init__()
        _check_sizes(
            num_sources=num_sources, enc_num_filters=enc_num_filters, bottleneck_channels=bottleneck_channels,
            hidden_channels=hidden_channels, skip_channels=1 if skip_channels is None else skip_channels,
            conv_kernel_size=conv_kernel_size, num_layers=num_layers, num_repeats=num_repeats,
        )  # fmt: skip
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
        self.masker = TemporalConvNet(
            num_sources, enc_num_filters, bottleneck_channels, hidden_channels, skip_channels,
            conv_kernel_size, num_layers, num_repeats, norm, causal, mask_activation,
        )  # fmt: skip
        self.decoder = nn.ConvTranspose1d(enc_num_filters, 1, enc_kernel_size, stride=self.stride, bias=False)

    def _padding(self, num_samples: int) -> tuple[int, int]:
        """Zeros to add (left, right) so that the frames tile the signal exactly (torchaudio's rule)."""
        is_odd = self.enc_kernel_size % 2
        num_strides = (num_samples - is_odd + self.stride - 1) // self.stride  # ceil, branch-free
        end = num_strides * self.stride + is_odd - num_samples
        return self.stride, self.stride + end

    def _overlap_add(self, masked: Tensor, length: int) -> Tensor:
        """Decoder: masked features ``[B, M, S, N]`` -> waveforms ``[B, S, length]``.

        Why not ``conv_transpose1d``: with one output channel it is ~25x slower on CPU than a
        1x1 conv to the ``L`` samples of each frame followed by an overlap-add (``F.fold``).
        """
        batch, num_frames, num_sources, num_filters = masked.shape
        weight = self.decoder.weight.squeeze(1).t().repeat(num_sources, 1).unsqueeze(2)  # [S*L, N, 1]
        masked = _time_major_to_4d(masked.flatten(2))  # [B, S*N, M, 1]
        frames = _conv(masked, weight, None, groups=num_sources)  # [B, S*L, M, 1]
        frames = frames.squeeze(3).unflatten(1, (num_sources, -1))  # [B, S, L, M]
        # Merge only B and S (no reshape over M): torch.export then keeps the length dynamic.
        frames = frames.reshape(batch * num_sources, self.enc_kernel_size, num_frames)  # [B*S, L, M]
        kernel = (1, self.enc_kernel_size)
        signal = F.fold(frames, (1, length), kernel_size=kernel, stride=(1, self.stride))  # [B*S, 1, 1, T'']
        return signal.view(batch, num_sources, length)

    def forward(self, mixture: Tensor) -> Tensor:
        """Separate ``mixture`` ``[B, T]`` into ``[B, S, T]``.

        Raises:
            ValueError: ``mixture`` is not 2-D.
        """
        if mixture.dim() != 2:
            raise ValueError(f"ConvTasNet expects a [batch, time] mixture, got shape {tuple(mixture.shape)}")
        batch, num_samples = mixture.shape
        left, right = self._padding(num_samples)
        padded = F.pad(mixture, (left, right))  # [B, T'']
        features = F.conv1d(padded.unsqueeze(1), self.encoder.weight, stride=self.stride)  # [B, N, M]
        features = features.transpose(1, 2).contiguous()  # [B, M, N]: time-major for the masker
        if self.encoder_activation == "relu":
            features = torch.relu(features)
        masks = self.masker(_time_major_to_4d(features))  # [B, M, S, N]
        signal = self._overlap_add(masks * features.unsqueeze(2), padded.shape[1])  # [B, S, T'']
        return signal[..., left : left + num_samples]

    @torch.no_grad()
    def prepare_for_inference(self) -> ConvTasNet:
        """Fold eval-mode BatchNorms into the 1x1 conv that follows them (exact), in place.

        Only the BatchNorms before a 1x1 conv fold exactly (the one before each depthwise conv
        meets its zero padding and stays). The folded model is for inference only: its state dict
        no longer matches :attr:`init_args`. Other norms are left unchanged.

        Returns:
            ``self``, in eval mode.
        """
        self.eval()
        masker = self.masker
        if isinstance(masker.bottleneck_norm, BatchNorm):
            _fold_norm_into_next_conv(masker.bottleneck_norm, masker.bottleneck_conv)
            masker.bottleneck_norm = nn.Identity()
        for block in masker.blocks:
            if isinstance(block.depthwise_norm, BatchNorm):
                _fold_norm_into_next_conv(block.depthwise_norm, block.out_conv)
                block.depthwise_norm = nn.Identity()
        return self


def _fold_norm_into_next_conv(bn: nn.BatchNorm1d, conv: nn.Conv1d) -> None:
    """Make ``conv`` compute ``conv(bn(x))`` for eval-mode ``bn`` (1x1 conv: no padding to respect)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # [C_in]
    shift = bn.bias - bn.running_mean * scale  # [C_in]
    weight = conv.weight.squeeze(2)  # [C_out, C_in]
    conv.bias.add_(weight @ shift)
    conv.weight.mul_(scale.view(1, -1, 1))


def _check_sizes(**sizes: int) -> None:
    """Raise ValueError naming the first size that is not a positive int."""
    for name, value in sizes.items():
        if not isinstance(value, int) or value < 1:
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
