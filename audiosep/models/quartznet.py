"""QuartzNet BxR (Kriman et al. 2020): 1-D time-channel separable convolutions + CTC head.

Shapes: ``B`` batch, ``F`` feature bins, ``T`` frames, ``C`` channels, ``V`` outputs (labels + blank).
Every convolution with a kernel wider than one frame sees its input zeroed past each utterance's
length (NeMo's masked convolution), and the norms that take statistics over time (``global_ln``,
``time_ln``) take them over the valid frames, so in eval mode padding never changes the valid outputs.
Layer layout mirrors NeMo's ``JasperBlock`` so that :mod:`audiosep.convert.nemo` maps weights 1:1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiosep.models.base import RebuildableModule
from audiosep.nn.features import length_mask
from audiosep.nn.norms import build_norm, norm_over_valid_frames

# Order of the fields of a block given as a list: [channels, kernel_size, repeat, stride, dilation,
# residual, separable, dropout]; trailing fields take the defaults below.
BLOCK_FIELDS: tuple[str, ...] = (
    "channels", "kernel_size", "repeat", "stride", "dilation", "residual", "separable", "dropout",
)  # fmt: skip
BLOCK_DEFAULTS: dict[str, Any] = {
    "repeat": 1, "stride": 1, "dilation": 1, "residual": True, "separable": True, "dropout": None,
}  # fmt: skip
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def parse_block(spec: Mapping[str, Any] | Sequence[Any]) -> dict[str, Any]:
    """Normalise one block spec (dict, or list in :data:`BLOCK_FIELDS` order) to a full dict.

    Raises:
        ValueError: unknown keys, missing channels/kernel_size, non-positive sizes, or an even kernel in a residual block.
    """
    if isinstance(spec, Mapping):
        unknown = set(spec) - set(BLOCK_FIELDS)
        if unknown:
            raise ValueError(f"unknown block keys {sorted(unknown)}; valid: {', '.join(BLOCK_FIELDS)}")
        given = dict(spec)
    else:
        if len(spec) > len(BLOCK_FIELDS):
            raise ValueError(f"a block list has at most {len(BLOCK_FIELDS)} fields, got {list(spec)}")
        given = dict(zip(BLOCK_FIELDS, spec, strict=False))
    missing = {"channels", "kernel_size"} - set(given)
    if missing:
        raise ValueError(f"block spec {spec!r} lacks {sorted(missing)}")
    block = BLOCK_DEFAULTS | given
    for key in ("channels", "kernel_size", "repeat", "stride", "dilation"):
        if int(block[key]) < 1:
            raise ValueError(f"block {key} must be >= 1, got {block[key]!r} in {spec!r}")
    if block["stride"] > 1 and block["dilation"] > 1:
        raise ValueError(f"a block may stride or dilate, not both: {spec!r}")
    if block["residual"] and int(block["kernel_size"]) % 2 == 0:  # "same" padding loses a frame: the sum failed
        raise ValueError(f"a residual block's kernel_size must be odd, got {block['kernel_size']!r} in {spec!r}")
    return block


def conv_out_lengths(lengths: Tensor, conv: nn.Conv1d) -> Tensor:
    """Output frames of ``conv`` for ``lengths`` input frames (PyTorch's Conv1d length formula)."""
    span = conv.dilation[0] * (conv.kernel_size[0] - 1)
    return torch.div(lengths + 2 * conv.padding[0] - span - 1, conv.stride[0], rounding_mode="floor") + 1


class SubBlock(nn.Module):
    """One convolution (separable: depthwise ``k`` then pointwise 1x1; else dense ``k``) + norm."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        block: dict[str, Any],
        stride: int,
        norm: str,
        eps: float | None,
    ) -> None:
        super().__init__()
        kernel, dilation = int(block["kernel_size"]), int(block["dilation"])
        padding = dilation * (kernel - 1) // 2  # "same" for odd kernels at stride 1
        if block["separable"]:
            self.depthwise = nn.Conv1d(
                in_channels, in_channels, kernel, stride, padding, dilation, groups=in_channels, bias=False
            )
            self.pointwise = nn.Conv1d(in_channels, out_channels, 1, bias=False)
            self.conv = None
        else:
            self.depthwise = self.pointwise = None
            self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride, padding, dilation, bias=False)
        self.norm = build_norm(norm, out_channels, eps)

    @property
    def temporal_conv(self) -> nn.Conv1d:
        """The convolution that mixes frames (decides the output length)."""
        return self.conv if self.conv is not None else self.depthwise

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` zero past ``lengths`` (the caller masks it: :class:`QuartzBlock` shares it with its residual)."""
        conv = self.temporal_conv
        x = conv(x)
        out_lengths = conv_out_lengths(lengths, conv)
        if self.pointwise is not None:  # NeMo masks every conv's input: padding stays out of BatchNorm's statistics
            x = self.pointwise(masked(x, out_lengths))
        return norm_over_valid_frames(self.norm, x, out_lengths), out_lengths


def masked(x: Tensor, lengths: Tensor) -> Tensor:
    """``x [B, C, T]`` with the frames past each row's length set to zero (NeMo's ``MaskedConv1d`` input)."""
    return x * length_mask(lengths, x.shape[-1]).unsqueeze(1).to(x.dtype)


class Residual(nn.Module):
    """Pointwise projection + norm of the block input, added before the block's last activation."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, eps: float | None) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.norm = build_norm(norm, out_channels, eps)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        return norm_over_valid_frames(self.norm, self.conv(x), lengths)


class QuartzBlock(nn.Module):
    """``repeat`` x (conv, norm, activation, dropout), the last activation after the residual add."""

    def __init__(
        self,
        in_channels: int,
        block: dict[str, Any],
        norm: str,
        eps: float | None,
        activation: str,
        dropout: float,
    ) -> None:
        super().__init__()
        channels, repeat = int(block["channels"]), int(block["repeat"])
        self.layers = nn.ModuleList(
            SubBlock(in_channels if r == 0 else channels, channels, block, int(block["stride"]), norm, eps)
            for r in range(repeat)
        )
        self.residual = Residual(in_channels, channels, norm, eps) if block["residual"] else None
        if self.residual is not None and int(block["stride"]) > 1:
            raise ValueError(f"a residual block cannot stride (NeMo 'add' mode): {block!r}")
        self.activation = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout if block["dropout"] is None else float(block["dropout"]))

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = masked(x, lengths)  # every conv's input is masked, as NeMo's: once for the first layer and the residual
        out, out_lengths = x, lengths
        for index, layer in enumerate(self.layers):
            if index:
                out = masked(self.dropout(self.activation(out)), out_lengths)
            out, out_lengths = layer(out, out_lengths)
        if self.residual is not None:
            out = out + self.residual(x, lengths)
        return self.dropout(self.activation(out)), out_lengths


class QuartzNet(RebuildableModule):
    """QuartzNet / Jasper-style CTC acoustic model over log-mel features.

    Args:
        in_features: F, feature bins per frame (64 log-mels).
        num_classes: V, labels + blank (29 for LibriSpeech characters).
        blocks: block specs, dicts with keys of :data:`BLOCK_FIELDS` or lists in that order,
            from the prologue C1 to the epilogues C2, C3.
        norm: registry name of the norm after each convolution (NeMo: BatchNorm, eps 1e-3).
        norm_eps: the norm's epsilon (``None`` = the registry's default).
        activation: ``relu`` (QuartzNet), ``gelu`` or ``silu``.
        dropout: default dropout of the blocks that do not set their own.

    Raises:
        ValueError: a bad block spec, an unknown norm or activation.

    Example:
        >>> model = QuartzNet(64, 29, [[32, 11, 1, 2, 1, False], [32, 11, 2], [64, 1, 1, 1, 1, False, False]])
        >>> log_probs, lengths = model(torch.randn(2, 64, 100), torch.tensor([100, 60]))
        >>> log_probs.shape, lengths.tolist()
        (torch.Size([2, 50, 29]), [50, 30])
    """

    def __init__(
        self,
        in_features: int = 64,
        num_classes: int = 29,
        blocks: list[Any] | None = None,
        norm: str = "batch_norm",
        norm_eps: float | None = 1e-3,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
        for name, size in (("in_features", in_features), ("num_classes", num_classes)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:  # 0 said "groups must be positive"
                raise ValueError(f"{name} must be a positive int, got {size!r}")
        specs = [parse_block(spec) for spec in (blocks or quartznet_blocks(5, 5))]
        self.in_features, self.num_classes = in_features, num_classes
        layers, channels = [], in_features
        for spec in specs:
            layers.append(QuartzBlock(channels, spec, norm, norm_eps, activation, dropout))
            channels = int(spec["channels"])
        self.blocks = nn.ModuleList(layers)
        self.head = nn.Conv1d(channels, num_classes, 1)
        self.apply(_xavier_init)

    @property
    def stride(self) -> int:
        """Total time subsampling (2 for QuartzNet: 10 ms frames -> 20 ms outputs)."""
        total = 1
        for block in self.blocks:
            total *= block.layers[0].temporal_conv.stride[0] ** len(block.layers)
        return total

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``features [B, F, T]``, ``lengths [B]`` -> ``(log_probs [B, T', V] float32, out_lengths [B])``."""
        if features.dim() != 3 or features.shape[1] != self.in_features:
            raise ValueError(
                f"expected features [B, {self.in_features}, T], got shape {tuple(features.shape)}"
            )
        x, lengths = features, lengths.to(features.device).long()
        for block in self.blocks:
            x, lengths = block(x, lengths)
        logits = self.head(x).transpose(1, 2)  # [B, T', V]
        return F.log_softmax(logits.float(), dim=-1), lengths


def _xavier_init(module: nn.Module) -> None:
    """NeMo's default init: Xavier-uniform convolution weights."""
    if isinstance(module, nn.Conv1d):
        nn.init.xavier_uniform_(module.weight)


def quartznet_blocks(num_blocks: int, repeat: int, block_copies: int | None = None) -> list[dict[str, Any]]:
    """NeMo's QuartzNet BxR block list: C1, B1..B5 (each ``B/5`` times), C2, C3.

    Args:
        num_blocks: B, 5 or 15 (each of the 5 block kinds is repeated ``B / 5`` times).
        repeat: R, sub-blocks per block (5).
        block_copies: override ``B / 5``.
    """
    if block_copies is None:
        if num_blocks % 5:
            raise ValueError(f"num_blocks must be a multiple of 5, got {num_blocks}")
        block_copies = num_blocks // 5
    kinds = [(256, 33), (256, 39), (512, 51), (512, 63), (512, 75)]
    body = [
        {"channels": c, "kernel_size": k, "repeat": repeat} for c, k in kinds for _ in range(block_copies)
    ]
    return [
        {"channels": 256, "kernel_size": 33, "stride": 2, "residual": False},
        *body,
        {"channels": 512, "kernel_size": 87, "dilation": 2, "residual": False},
        {"channels": 1024, "kernel_size": 1, "residual": False, "separable": False},
    ]


def _refuse_blocks(kwargs: dict[str, Any], preset: str) -> None:
    """A preset fixes its blocks (an override said "multiple values for argument 'blocks'")."""
    if "blocks" in kwargs:
        raise ValueError(f"{preset} fixes its blocks; build QuartzNet(blocks=...) for others")


def quartznet_5x5(in_features: int = 64, num_classes: int = 29, **kwargs: Any) -> QuartzNet:
    """QuartzNet 5x5 (NeMo ``QuartzNet5x5``): 6.7 M parameters."""
    _refuse_blocks(kwargs, "quartznet_5x5")
    return QuartzNet(in_features, num_classes, quartznet_blocks(5, 5), **kwargs)


def quartznet_15x5(in_features: int = 64, num_classes: int = 29, **kwargs: Any) -> QuartzNet:
    """QuartzNet 15x5 (NeMo ``QuartzNet15x5``): 18.9 M parameters."""
    _refuse_blocks(kwargs, "quartznet_15x5")
    return QuartzNet(in_features, num_classes, quartznet_blocks(15, 5), **kwargs)
