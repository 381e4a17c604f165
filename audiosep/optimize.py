"""Inference transforms: a new module with the plain model's outputs, built to run faster.

Models stay plain (their ``forward`` calls their own layers, so hooks, pruning and export keep
working); speed-ups live here as an explicit transform, :func:`prepare_for_inference`, whose
result is tested against the plain model (max abs error <= 1e-5 at speech level). The input
model is never modified.

What it does:

- **Conv-TasNet** becomes :class:`FastConvTasNet`: the masker runs on channels-last
  ``[B, C, M, 1]`` tensors (physically ``[B, M, C]``; on CPU oneDNN runs a 1x1 convolution about
  twice as fast, and GroupNorm several times faster, than on ``[B, C, M]``); each conv and the
  PReLU / sigmoid / ReLU after it are one oneDNN call (:class:`FusedConv`); the per-channel affine
  of every norm that feeds a 1x1 conv is folded into that conv (an eval-mode BatchNorm there
  disappears entirely). For one long item, a gLN's statistics go into the next conv's weights as well
  (:class:`NormPointwise`, :class:`NormDepthwise`), so no normalised tensor is written, and the
  residual and skip sums are added by the 1x1 convs as they write (:func:`conv_add`): 1.8x at
  16 s, where those passes over the 512-channel tensors were memory-bound.
- **QuartzNet**: every norm that is a per-channel affine at inference (BatchNorm, Unified
  Normalization, PowerNorm) is folded into the convolution before it.
- **SepFormer, Tiny-Sepformer, RE-SepFormer** (an eval-mode copy, their fast paths are inside
  their plain layers already: fused attention kernels): the mask network's input norm gives its
  per-channel affine to the bottleneck linear after it (a BatchNorm-like norm disappears), and a
  BatchNorm-like norm after an intra/inter transformer stack is composed into that stack's final
  LayerNorm affine and disappears.
- **Every model**: each linear layer becomes one oneDNN call with its bias (and a ReLU right after
  it in an ``nn.Sequential``, as in the transformer feed-forward) inside (:class:`FusedLinear`) on
  AVX-512 CPUs, ``F.linear`` and an in-place ReLU elsewhere; self-attention over short sequences runs
  as two matrix products and a softmax on CPUs without AVX-512 (:class:`ShortSequenceAttention`).
  Which kernels win was measured on one CPU of each kind (:data:`ONEDNN_MATMULS`).
"""

from __future__ import annotations

import copy
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiosep.models.conv_tasnet import ConvBlock, ConvTasNet, TemporalConvNet, overlap_add, tasnet_padding
from audiosep.models.masking import DualPathMasker, MaskingSeparator
from audiosep.models.quartznet import QuartzNet
from audiosep.models.resepformer import ChunkSummaryMasker
from audiosep.nn.attention import MultiHeadSelfAttention
from audiosep.nn.dual_path import SequenceStack
from audiosep.nn.norms import (
    CumulativeLayerNorm,
    GlobalLayerNorm,
    Identity,
    _AffineNorm,
    fold_affine_into_conv,
    inference_affine,
)

FusedActivation = Literal["none", "prelu", "sigmoid", "relu"]


@torch.no_grad()
def prepare_for_inference(model: nn.Module, fold_norm_scales: bool = True) -> nn.Module:
    """Return a new eval-mode module that computes what ``model`` computes, faster on CPU.

    ``fold_norm_scales=False`` keeps each norm's per-channel scale out of the 1x1 conv or linear layer
    after it (the norm then runs whole before it): for layers about to be quantized, where one large
    scale (a BatchNorm channel of zero variance: a column 124x the others) widens every row's int8 step:
    the SepFormer of ``test_a_dead_norm_channel_does_not_coarsen_every_int8_weight`` was 20.0 dB SI-SNR from
    fp32 in int8 with the scale folded in, 38.0 dB without.

    Example:
        >>> fast = prepare_for_inference(conv_tasnet_demo().eval())  # doctest: +SKIP
        >>> torch.allclose(fast(x), model(x), atol=1e-5)             # doctest: +SKIP
        True

    A model with layers in training mode is prepared as in eval mode (with a warning): BatchNorm's running
    statistics, no dropout. A model holding a user's subclass of an audiosep or ``torch.nn`` layer (a
    masked linear layer, a Conv-TasNet with its own ``forward``) is returned as an eval-mode copy,
    untransformed, with a warning: the transforms rebuild layers from their weights and would drop
    what the subclass changes. A prepared model prepares again as itself.

    Raises:
        ValueError: ``model`` has forward or backward hooks (SepPrune's channel gates, a user's
            feature capture): the prepared layers are fused and channels-last, so a hook copied onto
            them would see other tensors, or silently stop changing the output.
    """
    refuse_hooks(model)
    training = type(model).__name__ if model.training else next(
        (name for name, module in model.named_modules() if _trains_otherwise(module)), None
    )
    if training is not None:  # one BatchNorm left in training mode too (reviewer): it normalised by the batch
        warnings.warn(f"prepare_for_inference: {type(model).__name__} has layers in training mode ({training}); the "
                      "prepared copy computes what it computes in eval mode", stacklevel=3)  # fmt: skip
    plain = copy.deepcopy(model).eval()
    subclass = user_subclass(plain)
    if subclass is not None:
        warnings.warn(f"prepare_for_inference: {subclass} subclasses an audiosep or torch.nn layer and may change "
                      "what it computes; the model is not transformed (it runs as it is)", stacklevel=3)  # fmt: skip
        return _inference_only(plain)
    if type(plain) is ConvTasNet:
        try:
            return _inference_only(FastConvTasNet(plain, fold_norm_scales))
        except NotFusable as err:  # a swapped layer: an AttributeError traceback before
            warnings.warn(f"prepare_for_inference: {type(model).__name__} holds {err}; the model is not transformed "
                          "(it runs as it is)", stacklevel=3)  # fmt: skip
            return _inference_only(plain)
    if isinstance(plain, QuartzNet):
        fold_quartznet_batchnorms(plain)
    if isinstance(plain, MaskingSeparator):
        fold_masknet_norms(plain, fold_norm_scales)
    short_sequence_attention(plain)
    fuse_linears(plain)
    return _inference_only(plain)  # the folding made new modules, in training mode


def _trains_otherwise(module: nn.Module) -> bool:
    """Whether ``module`` is in training mode and computes otherwise there: a dropout, or a layer with running
    statistics (BatchNorm, Unified Norm, PowerNorm); not a stateless layer a user swapped in (an ``nn.Tanh()``)."""
    return module.training and (isinstance(module, nn.modules.dropout._DropoutNd) or next(module.buffers(False), None) is not None)


def _inference_only(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with no parameter asking for gradients (a prepared model is never trained)."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


def _own_class(cls: type) -> bool:
    """Whether ``cls`` is audiosep's or torch.nn's own (the classes whose behaviour the transforms know)."""
    return cls.__module__.split(".")[0] == "audiosep" or cls.__module__.startswith("torch.nn.")


def user_subclass(model: nn.Module) -> str | None:
    """``"name (Class)"`` of the first submodule whose class is not audiosep's or torch.nn's own but
    subclasses one of them (other than ``nn.Module``); None when there is none."""
    for name, module in model.named_modules():
        cls = type(module)
        if not _own_class(cls) and any(_own_class(base) and base is not nn.Module for base in cls.__mro__[1:]):
            return f"{name or 'the model'} ({cls.__name__})"
    return None


def refuse_hooks(model: nn.Module, user: str = "prepare_for_inference", why: str = "the prepared copy's layers are fused") -> None:
    """Raise ``ValueError`` naming the submodules of ``model`` that carry forward or backward hooks
    (``user``: who refuses them, ``why``: why they would not run there)."""
    hooked = [
        name or type(model).__name__
        for name, module in model.named_modules()
        if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
    ]
    if hooked:
        listed = ", ".join(hooked[:3]) + (f" and {len(hooked) - 3} more" if len(hooked) > 3 else "")
        raise ValueError(
            f"{user}: {type(model).__name__} has hooks on {listed}; {why}, so hooks cannot carry over: remove "
            "them first (SepPrune gates: prune the model) or run the plain model"
        )


def _cpu_inference(x: Tensor) -> bool:
    """Whether ``x`` is CPU float32 without autograd, not traced or compiled: where the CPU kernel choices apply."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
    )


def _oneDNN_usable(x: Tensor) -> bool:
    """Whether the fused oneDNN call applies: CPU float32 inference on a build with oneDNN."""
    return _cpu_inference(x) and torch.backends.mkldnn.is_available()


# Which kernels run the matrix products of linear layers and short attention on this CPU. oneDNN's fused
# linear (bias and ReLU inside) and torch's fused attention were the fastest on an AVX-512 Xeon (Sapphire
# Rapids: F.linear's bias copy was 10-17 % of a SepFormer forward; matmul + softmax 2-3x slower there). On an
# AVX2 EPYC (Zen 3) both lost: F.linear (MKL) made SepFormer and RE-SepFormer 1.15-1.2x faster at 1 s, and
# the fused attention kernel ran sequences of 8-64 positions up to 4x slower than matmul + softmax (interleaved
# A/B, 2 threads; benchmarks/cpu_kernels.py). Only those two CPUs were measured: every CPU without AVX-512
# (ARM, older x86) gets the EPYC's choice, every AVX-512 one (Zen 4 too) the Xeon's.
ONEDNN_MATMULS = torch.backends.cpu.get_cpu_capability() == "AVX512"
SHORT_ATTENTION_MAX = 64  # positions: up to here matmul + softmax beat the fused kernel on the AVX2 EPYC (at 128 it lost as often)
SHORT_ATTENTION_MAX_SCORES = 1 << 24  # score values (64 MiB): longer inputs run the fused kernel, which stores none


# Beyond this many taps a conv along time runs channels-first: oneDNN's channels-last kernel (fused or through
# conv2d) holds about 76 bytes x taps^2 of workspace whatever the input (2 GB at 4097 taps, from a 73 KB model
# file: reviewer), the channels-first conv1d a few MiB. Stock models use 3.
CHANNELS_LAST_MAX_TAPS = 256


def conv_time(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    activation: FusedActivation = "none",
    slope: float = 0.0,
    padding: int = 0,
    dilation: int = 1,
    groups: int = 1,
) -> Tensor:
    """``activation(conv(x))`` along time of a channels-last ``[B, C, M, 1]``: one oneDNN call where usable."""
    taps = weight.shape[2]
    if _oneDNN_usable(x) and taps <= CHANNELS_LAST_MAX_TAPS:
        attr, scalars = ("leaky_relu", [slope]) if activation == "prelu" else (activation, [])
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, [padding, 0], [1, 1], [dilation, 1], groups, attr, scalars, ""
        )
    if taps > CHANNELS_LAST_MAX_TAPS:
        y = F.conv1d(x.squeeze(3).contiguous(), weight.squeeze(3), bias, padding=padding, dilation=dilation, groups=groups)
        y = y.unsqueeze(3).contiguous(memory_format=torch.channels_last)
    else:
        y = F.conv2d(x, weight, bias, padding=(padding, 0), dilation=(dilation, 1), groups=groups)
    if activation == "prelu":
        return F.leaky_relu(y, slope)
    if activation == "sigmoid":
        return torch.sigmoid(y)
    return torch.relu(y) if activation == "relu" else y


class FusedConv(nn.Module):
    """``activation(conv(x))`` along time on a channels-last ``[B, C_in, M, 1]`` tensor.

    On CPU float32 without autograd the conv and its activation are one oneDNN call (why: each
    fused activation saves a full read and write of the activation tensor, and the direct call
    avoids PyTorch's slow 1x1-conv path on one thread); elsewhere ``conv2d`` then the activation.

    Args:
        weight: ``Conv1d`` weight ``[C_out, C_in / groups, K]`` (copied).
        bias: ``[C_out]`` or None.
        activation: applied after the conv; ``prelu`` takes the one-parameter ``slope``.
        slope: PReLU slope (a one-element PReLU is leaky ReLU with that negative slope).
        padding: zeros on both ends of the time axis.
    """

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        activation: FusedActivation = "none",
        slope: float = 0.0,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().unsqueeze(3), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.activation, self.slope = activation, float(slope)
        self.padding, self.dilation, self.groups = padding, dilation, groups

    def forward(self, x: Tensor) -> Tensor:
        return self.apply_to(x, self.weight, self.bias)

    def apply_to(self, x: Tensor, weight: Tensor, bias: Tensor | None, padding: int | None = None) -> Tensor:
        """This conv with other ``weight``/``bias`` (and time ``padding``, default its own)."""
        padding = self.padding if padding is None else padding
        return conv_time(x, weight, bias, self.activation, self.slope, padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        out_channels, in_channels, kernel, _ = self.weight.shape
        return f"{in_channels * self.groups}, {out_channels}, kernel={kernel}, activation={self.activation}"


class FusedLinear(nn.Module):
    """``activation(x @ W^T + b)`` over the last dim of ``x``; ``activation`` is ``none`` or ``relu``.

    On an AVX-512 CPU (:data:`ONEDNN_MATMULS`), float32 without autograd, the matrix product, its bias and
    the ReLU are one oneDNN call (why: ``F.linear`` first copies the broadcast bias into the output, then
    reads it back in the product, and a ReLU after it is one more pass over the widest tensor of a
    transformer layer); elsewhere ``F.linear`` then the ReLU in place (faster on an AVX2 EPYC).

    Args:
        linear: the layer whose weight and bias are copied.
        activation: applied after the product.
    """

    def __init__(self, linear: nn.Linear, activation: Literal["none", "relu"] = "none") -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        if ONEDNN_MATMULS and _oneDNN_usable(x):
            y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, self.in_features), self.weight, self.bias,
                                                   self.activation, [], "")  # fmt: skip
            return y.view(*x.shape[:-1], self.out_features)
        y = F.linear(x, self.weight, self.bias)
        return torch.relu_(y) if self.activation == "relu" else y  # y is this layer's own temporary

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, activation={self.activation}"


class ShortSequenceAttention(MultiHeadSelfAttention):
    """:class:`MultiHeadSelfAttention` whose short non-causal sequences run as ``matmul``, ``softmax``,
    ``matmul`` on CPUs without AVX-512 (see :data:`ONEDNN_MATMULS`); the fused kernel everywhere else.

    Why: the dual-path models attend over many short sequences (SepFormer's inter-chunk attention: as
    many positions as chunks), where the fused CPU kernel's blocking costs more than the score matrix.
    """

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        batch, heads, length, _ = q.shape
        short = length <= SHORT_ATTENTION_MAX and batch * heads * length * length <= SHORT_ATTENTION_MAX_SCORES
        if ONEDNN_MATMULS or self.causal or not short or not _cpu_inference(q):
            return super().attend(q, k, v)
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)  # [B, H, L, L]
        return torch.matmul(torch.softmax(scores, dim=-1), v)


def short_sequence_attention(module: nn.Module) -> int:
    """Make every :class:`MultiHeadSelfAttention` below ``module`` a :class:`ShortSequenceAttention`, in
    place (its class only: weights, and a pruned layer's shapes, stay as they are); returns how many."""
    swapped = 0
    for child in module.modules():
        if type(child) is MultiHeadSelfAttention:
            child.__class__ = ShortSequenceAttention
            swapped += 1
    return swapped


def fuse_linears(module: nn.Module) -> int:
    """Replace every ``nn.Linear`` below ``module`` by a :class:`FusedLinear`, in place; returns how many.

    A ReLU right after a linear layer in an ``nn.Sequential`` (the transformer feed-forward) moves
    into it and leaves an ``nn.Identity``.
    """
    fused = 0
    children = list(module.named_children())
    for position, (name, child) in enumerate(children):
        if type(child) is not nn.Linear:  # a subclass may compute something else (prepare refuses those)
            fused += fuse_linears(child)
            continue
        after = children[position + 1] if isinstance(module, nn.Sequential) and position + 1 < len(children) else None
        relu = after is not None and type(after[1]) is nn.ReLU
        setattr(module, name, FusedLinear(child, "relu" if relu else "none"))
        if relu:
            setattr(module, after[0], nn.Identity())
        fused += 1
    return fused


class ChannelAffine(nn.Module):
    """``x * scale + shift`` per channel of ``[B, C, ...]`` (an eval-mode BatchNorm)."""

    def __init__(self, scale: Tensor, shift: Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.view(shape) + self.shift.view(shape)


class ChannelsLastNorm(nn.Module):
    """A registry norm on channels-last ``[B, C, M, 1]``; ``affine=False`` applies only its statistics."""

    def __init__(self, norm: nn.Module, affine: bool = True) -> None:
        super().__init__()
        self.norm, self.affine = norm, affine

    def forward(self, x: Tensor, inplace: bool = False) -> Tensor:
        """The norm of ``x``; ``inplace`` lets a large gLN write into ``x`` (a temporary of the caller's)."""
        if isinstance(self.norm, GlobalLayerNorm) and _oneDNN_usable(x):  # eager CPU float32 inference
            return self._precise_global(x, inplace)
        apply = self.norm if self.affine else self.norm.normalize
        if isinstance(self.norm, CumulativeLayerNorm):  # defined on [B, C, T] only
            y = apply(x.squeeze(3)).unsqueeze(3)
        else:
            y = apply(x)
        return y.contiguous(memory_format=torch.channels_last)

    def _precise_global(self, x: Tensor, inplace: bool = False) -> Tensor:
        """gLN of each item, never through torch's channels-last group norm: its CPU kernel takes the
        variance as mean square minus squared mean in float32, 2e-2 off once the mean is 100 times the
        spread (5e4 at 1000 times; 2e-5 at 512 x 1000 values of zero mean). Small items go through the
        channels-first kernel (:meth:`_flat_statistics`), large ones through :meth:`_global`."""
        if x[:1].numel() > FLAT_MAX_VALUES:
            return self._global(x, inplace and x.is_contiguous(memory_format=torch.channels_last))
        normalised = self._flat_statistics(x)
        if not self.affine:
            return normalised
        shape = (1, -1, 1, 1)
        return torch.addcmul(self.norm.bias.view(shape), normalised, self.norm.weight.view(shape))

    def _flat_statistics(self, x: Tensor) -> Tensor:
        """gLN's statistics only, by torch's channels-first group norm of each item as one ``[1, M*C]`` row
        (a view of the channels-last memory): as precise as the plain model's, and one call."""
        batch, channels, frames, width = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(batch, 1, -1)
        normalised = F.group_norm(rows, 1, None, None, self.norm.eps)
        return normalised.view(batch, frames, width, channels).permute(0, 3, 1, 2)

    def _global(self, x: Tensor, inplace: bool = False) -> Tensor:
        """gLN from each item's :func:`global_moments` (float64 block sums, centred when the mean outweighs
        the spread) and one multiply-add: 1e-5 where the channels-last kernel is 2e-2 off, and faster than it
        from ~256k values (512 x 1000: 135 instead of 195 us). ``inplace`` writes into ``x``: no new
        tensor of its size (from 32 MiB, 16 s of a 512-channel TCN, every new one is fresh pages)."""
        out = x if inplace else torch.empty_like(x, memory_format=torch.channels_last)
        for item, target in zip(x.split(1), out.split(1), strict=True):  # one item at a time: addcmul's fast path
            scale, shift = gln_item_affine(self.norm, item, self.affine)
            torch.addcmul(shift.view(1, -1, 1, 1), item, scale.view(1, -1, 1, 1), out=target)
        return out


def normalise_temporary(norm: nn.Module, x: Tensor) -> Tensor:
    """``norm(x)`` for an ``x`` nothing else reads afterwards: a large gLN writes into it (no new tensor)."""
    return norm(x, inplace=True) if isinstance(norm, ChannelsLastNorm) else norm(x)


class NotFusable(TypeError):
    """A layer where the fast Conv-TasNet fuses another kind (a user's swap): the model runs untransformed."""


def norm_affine(norm: nn.Module) -> tuple[Tensor, Tensor] | None:
    """``(scale, shift)`` of the per-channel affine a norm applies last; None for ``none``.

    For a norm that is a per-channel affine at inference (BatchNorm, UN, PowerNorm) that is the
    whole norm; for the others, the ``weight``/``bias`` after their statistics.
    """
    affine = inference_affine(norm)
    if affine is not None:
        return affine
    if isinstance(norm, _AffineNorm):
        return norm.weight, norm.bias
    if isinstance(norm, nn.Identity):
        return None
    raise NotFusable(f"no folding rule for {type(norm).__name__}")


def norm_then_conv(
    norm: nn.Module, conv: nn.Conv1d, activation: FusedActivation = "none", fold_scale: bool = True
) -> tuple[nn.Module, FusedConv]:
    """``(stats, conv')`` with ``conv'(stats(x)) == conv(norm(x))`` for a 1x1 ``conv``.

    The norm's per-channel affine ``a * z + b`` moves into the conv: ``W' = W diag(a)``,
    ``c' = c + W b``; what stays is the norm's statistics only (nothing for BatchNorm). Without
    ``fold_scale`` the whole norm stays and the conv keeps its weights.
    """
    weight, bias = conv.weight.squeeze(2), conv.bias  # [C_out, C_in]
    if not fold_scale:
        return _standalone_norm(norm), FusedConv(weight.unsqueeze(2), bias, activation)
    affine = norm_affine(norm)
    if affine is not None:
        scale, shift = affine
        bias = (weight.new_zeros(weight.shape[0]) if bias is None else bias) + weight @ shift
        weight = weight * scale
    stats: nn.Module
    if inference_affine(norm) is not None or isinstance(norm, nn.Identity):
        stats = nn.Identity()
    else:
        stats = ChannelsLastNorm(norm, affine=False)
    return stats, FusedConv(weight.unsqueeze(2), bias, activation)


def _standalone_norm(norm: nn.Module) -> nn.Module:
    """A norm that cannot fold (it feeds a zero-padded depthwise conv), for channels-last input."""
    affine = inference_affine(norm)
    if affine is not None:
        return ChannelAffine(*affine)
    if isinstance(norm, nn.Identity):
        return nn.Identity()
    if not isinstance(norm, _AffineNorm):  # a user's swap (InstanceNorm1d): a crash on the 4-D input before
        raise NotFusable(f"a {type(norm).__name__} norm, not one of audiosep's, where a norm runs channels-last")
    return ChannelsLastNorm(norm)


def _prelu_slope(prelu: nn.Module) -> float:
    if type(prelu) is not nn.PReLU or prelu.weight.numel() != 1:
        raise NotFusable(f"a {type(prelu).__name__} where a one-parameter PReLU fuses into a conv")
    return float(prelu.weight.detach())


MOMENT_BLOCK = 1 << 18


def global_moments(x: Tensor) -> tuple[float, float]:
    """Mean and variance over all of a one-item channels-last ``[1, C, M, 1]`` tensor, as float64 numbers.

    Why not ``var_mean``: it is about seven times slower than a group norm here; a sum and dot
    products are fast and write nothing. The sums are taken per 2**18-value block and the blocks
    added in float64 (a float32 dot product of 2**20 values was off by up to 1e-5 relative on an AVX2
    EPYC, 2**18 by 1e-6, at the same speed). The variance as mean square minus squared mean cancels when the mean outweighs the
    spread (error ~1e-7 (mean / std)^2): then the centred values are summed instead, one more pass
    (features of the demo and base models have mean^2 / var below 0.8). Python numbers, not tensors:
    a handful of scalar tensor ops per norm cost more than the sums themselves at 1 s.
    """
    flat = x.permute(0, 2, 3, 1).reshape(-1)  # a view: the memory order of channels-last
    count = flat.numel()
    total = squares = 0.0
    for block in flat.split(MOMENT_BLOCK):
        total += block.sum().item()
        squares += torch.dot(block, block).item()
    mean = total / count
    var = squares / count - mean * mean
    if mean * mean > var:
        anchor = float(torch.tensor(mean, dtype=flat.dtype))  # representable: the subtraction is then exact
        centred = (flat - anchor).split(MOMENT_BLOCK)
        correction = sum(block.sum().item() for block in centred) / count  # what float32 sums left in the mean
        var = sum(torch.dot(block, block).item() for block in centred) / count - correction * correction
        mean = anchor + correction
    return mean, max(var, 0.0)


# Up to this many values per item, a gLN runs as torch's channels-first group norm of the item as one
# row (:meth:`ChannelsLastNorm._flat_statistics`; one call, as fast as the channels-last kernel there);
# beyond, the sums of :func:`global_moments`: that kernel runs one item on one thread (512 x 500 values:
# 85 against 56 us; 512 x 4000 in the int8 Conv-TasNet: 2 ms a call, 23 % of its time).
FLAT_MAX_VALUES = 1 << 17
FOLD_MIN_FRAMES = 1000  # below this, the fold's dozen extra small ops per norm cost more than they save
# The depthwise fold also recomputes the padded edges; it pays only once the tensor outgrows the caches:
# conv_tasnet_base 0.98x at 1 s (512 x 1000 values), even at 4 s, 1.07x at 8 s (4M values), 1.09x at 16 s;
# the 128-channel demo model 0.95x at 32 s (2M values).
DEPTHWISE_FOLD_MIN_VALUES = 1 << 22


def gln_item_affine(gln: GlobalLayerNorm, item: Tensor, affine: bool = True) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` per channel with ``gln(item) == scale * item + shift`` for one channels-last item
    ``[1, C, M, 1]``, from its :func:`global_moments`; without ``affine``, of the statistics alone (constant
    per-channel tensors: addcmul's fast path, where ``[1, 1, 1, 1]`` ones were slow)."""
    mean, var = global_moments(item)
    inv_std = (var + gln.eps) ** -0.5
    if not affine:
        return item.new_full((item.shape[1],), inv_std), item.new_full((item.shape[1],), -mean * inv_std)
    scale = gln.weight * inv_std
    return scale, torch.add(gln.bias, scale, alpha=-mean)


def _folds_global_statistics(x: Tensor) -> bool:
    """Whether a gLN's statistics of ``x`` go into the next conv's weights: one item of ``FOLD_MIN_FRAMES``
    frames or more, on oneDNN.

    Why the length: the fold saves passes over the tensor and costs a fixed number of small ops; with
    the 1x1 and depthwise folds together, at 500 frames it was 6 % slower for conv_tasnet_base and 21 %
    for the 128-channel demo model, at 1000 frames 5 % faster and even, at 1500 frames 14 % faster for
    the demo model, at 16 s 1.8x (interleaved A/B, 2 threads, this project's Xeon).
    """
    return x.shape[0] == 1 and x.shape[2] >= FOLD_MIN_FRAMES and _oneDNN_usable(x)


def _global_ln(norm: nn.Module) -> GlobalLayerNorm | None:
    """The gLN a channels-last norm wrapper applies, if it is one (its statistics can fold into a conv)."""
    inner = norm.norm if isinstance(norm, ChannelsLastNorm) else None
    return inner if isinstance(inner, GlobalLayerNorm) else None


class NormDepthwise(nn.Module):
    """``depthwise(pad(norm(h)))`` on channels-last ``[B, C, M, 1]``, the depthwise conv's PReLU fused.

    A gLN on one item is, for that input, the per-channel affine ``a h + c`` (``a = g / sigma``,
    ``c = b - a mu``), which goes into the depthwise weights and bias (``w' = a w``,
    ``bias' = bias + c sum(w)``) so the normalised ``h`` is never written. That is exact where the
    kernel sees no padding; the frames within reach of the zeros are computed again from the
    normalised ``left + right`` frames at each end.
    """

    def __init__(self, norm: nn.Module, depthwise: FusedConv, padding: tuple[int, int]) -> None:
        super().__init__()
        self.norm = _standalone_norm(norm)
        self.depthwise = depthwise
        self.left, self.right = padding
        self.register_buffer("tap_sums", depthwise.weight.sum(dim=(1, 2, 3)))

    def forward(self, h: Tensor) -> Tensor:
        """The block's depthwise stage; ``h`` (the 1x1 conv's output, a temporary) may be overwritten."""
        span = self.left + self.right
        gln = _global_ln(self.norm)
        foldable = h.shape[2] >= span and h.numel() >= DEPTHWISE_FOLD_MIN_VALUES
        if gln is None or not (foldable and _folds_global_statistics(h)):
            return self._padded(normalise_temporary(self.norm, h), self.depthwise.weight, self.depthwise.bias)
        scale, shift = gln_item_affine(gln, h)  # [C]: gLN(h) = scale h + shift, channel-wise
        y = self._padded(h, self.depthwise.weight * scale.view(-1, 1, 1, 1),
                         torch.addcmul(self.depthwise.bias, shift, self.tap_sums))  # fmt: skip
        if span:
            edges = torch.addcmul(shift.view(1, -1, 1, 1), torch.cat([h[:, :, :span], h[:, :, -span:]]),
                                  scale.view(1, -1, 1, 1))  # fmt: skip
            exact = self._padded(edges, self.depthwise.weight, self.depthwise.bias)
            y[:, :, : self.left] = exact[:1, :, : self.left]
            y[:, :, y.shape[2] - self.right :] = exact[1:, :, self.left :]
        return y

    def _padded(self, h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.left == self.right:
            return self.depthwise.apply_to(h, weight, bias, padding=self.left)
        return self.depthwise.apply_to(F.pad(h, (0, 0, self.left, self.right)), weight, bias, padding=0)


class NormPointwise(nn.Module):
    """``conv(norm(x))`` for a 1x1 conv, the norm's per-channel affine folded into the conv.

    A gLN's statistics on one item go into the conv's weights too (``conv(r (x - mu)) = (r W) x + c
    - r mu W 1``), so the normalised ``x`` is never written: :meth:`operands` gives the input,
    weight and bias that the conv runs with. Once :mod:`audiosep.quantize` has made ``conv`` int8 (its
    weights are packed), the statistics normalise ``x`` first: folded into the int8 conv's output
    instead (``r (Wq x + c) + (1 - r) c - r mu Wq 1``), the raw input quantised worse (int8 2-6 dB
    further from fp32 on minute-long speech, measured), so that fold was dropped.
    """

    def __init__(
        self, norm: nn.Module, conv: nn.Conv1d, activation: FusedActivation = "none", fold_scale: bool = True
    ) -> None:
        super().__init__()
        self.stats, self.conv = norm_then_conv(norm, conv, activation, fold_scale)
        self.register_buffer("weight_sums", self.conv.weight.sum(dim=(1, 2, 3)))

    def operands(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(input, weight, bias)`` with ``conv(input; weight, bias) == conv(norm(x))``."""
        gln = _global_ln(self.stats)
        if gln is None or self.stats.affine or not _folds_global_statistics(x):  # affine: the norm stayed whole
            return self.stats(x), self.conv.weight, self.conv.bias
        mean, var = global_moments(x)
        inv_std = (var + gln.eps) ** -0.5
        return x, self.conv.weight * inv_std, torch.add(self.conv.bias, self.weight_sums, alpha=-inv_std * mean)

    @property
    def float_weights(self) -> bool:
        """Whether ``conv`` is still the float :class:`FusedConv` (not an int8 replacement)."""
        return isinstance(self.conv, FusedConv)

    def forward(self, x: Tensor) -> Tensor:
        if self.float_weights:
            return self.conv.apply_to(*self.operands(x))
        return self.conv(self.stats(x))


def conv_add(total: Tensor | None, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``total + conv1x1(x)`` (``conv1x1(x)`` when ``total`` is None), into ``total`` where oneDNN applies.

    Why: the TCN's residual and skip sums are otherwise one more pass over three tensors per block;
    oneDNN adds the conv's output to ``total`` as it writes it.
    """
    if total is None:
        return conv_time(x, weight, bias)
    if _oneDNN_usable(x) and total.is_contiguous(memory_format=torch.channels_last):
        return torch.ops.mkldnn._convolution_pointwise_.binary(
            total, x, weight, bias, [0, 0], [1, 1], [1, 1], 1, "add", 1.0, None, [], None
        )
    return total + conv_time(x, weight, bias)


class FastConvBlock(nn.Module):
    """:class:`ConvBlock` on channels-last tensors with fused activations and folded norms."""

    def __init__(self, block: ConvBlock, fold_norm_scales: bool = True) -> None:
        super().__init__()
        self.residual_channels, self.skip_channels = block.residual_channels, block.skip_channels
        self.in_conv = FusedConv(block.in_conv.weight, block.in_conv.bias, "prelu", _prelu_slope(block.in_act))
        left, right = block.padding
        dw = block.depthwise
        bias = dw.weight.new_zeros(dw.out_channels) if dw.bias is None else dw.bias
        depthwise = FusedConv(dw.weight, bias, "prelu", _prelu_slope(block.depthwise_act), 0, dw.dilation[0], dw.groups)
        self.depthwise = NormDepthwise(block.in_norm, depthwise, (left, right))
        self.out = NormPointwise(block.depthwise_norm, block.out_conv, fold_scale=fold_norm_scales)

    def forward(self, x: Tensor, skips: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Add this block's residual to ``x`` and its skip to ``skips``: ``[B, B_c, M, 1]``, channels-last.

        Both tensors may be updated in place (they are the TCN's own running sums).
        """
        h = self.depthwise(self.in_conv(x))
        if not self.out.float_weights:  # int8 (audiosep.quantize.Int8ResidualSkip): it adds into the sums
            return self.out.conv(normalise_temporary(self.out.stats, h), x, skips)
        residual = self.residual_channels
        h, weight, bias = self.out.operands(h)
        if residual:
            x = conv_add(x, h, weight[:residual], None if bias is None else bias[:residual])
        if self.skip_channels:
            skips = conv_add(skips, h, weight[residual:], None if bias is None else bias[residual:])
        return x, skips


class FastTemporalConvNet(nn.Module):
    """:class:`TemporalConvNet` on channels-last tensors: ``[B, N, M, 1]`` -> masks ``[B, M, S, N]``."""

    def __init__(self, masker: TemporalConvNet, fold_norm_scales: bool = True) -> None:
        super().__init__()
        self.num_sources, self.mask_activation = masker.num_sources, masker.mask_activation
        self.bottleneck = NormPointwise(masker.bottleneck_norm, masker.bottleneck_conv, fold_scale=fold_norm_scales)
        self.blocks = nn.ModuleList(FastConvBlock(block, fold_norm_scales) for block in masker.blocks)
        self.output_prelu = masker.output_prelu
        # The mask activation the constructor made is fused (sigmoid, ReLU) or a softmax over sources here; a
        # layer swapped in for it (``masker.mask_act = nn.Tanh()``) runs itself, on the plain model's layout.
        self.mask_act = None if stock_mask_activation(masker) else masker.mask_act
        fused = "none" if masker.mask_activation == "softmax" or self.mask_act is not None else masker.mask_activation
        self.output_conv = FusedConv(masker.output_conv.weight, masker.output_conv.bias, fused)

    def forward(self, features: Tensor) -> Tensor:
        x, skips = self.bottleneck(features), None
        for block in self.blocks:
            x, skips = block(x, skips)
        h = x if skips is None else skips
        # a PReLU works per channel on either layout; a layer swapped in gets the plain model's [B, C, M]
        h = self.output_prelu(h) if isinstance(self.output_prelu, nn.PReLU) else self.output_prelu(h.squeeze(3)).unsqueeze(3)
        masks = self.output_conv(h)  # [B, S*N, M, 1]
        masks = masks.permute(0, 2, 3, 1).squeeze(2).unflatten(2, (self.num_sources, -1))  # [B, M, S, N]
        if self.mask_act is not None:  # the plain model's [B, S, N, M]
            return self.mask_act(masks.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return torch.softmax(masks, dim=2) if self.mask_activation == "softmax" else masks


def stock_mask_activation(masker: TemporalConvNet) -> bool:
    """Whether ``masker.mask_act`` is the layer its constructor made for ``mask_activation`` (the one the fast
    path fuses), not a layer a user swapped in (which then runs as it is; it was ignored: reviewer)."""
    layer, name = masker.mask_act, masker.mask_activation
    if name == "softmax":
        return type(layer) is nn.Softmax and layer.dim == 1
    return type(layer) is {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}[name]


def time_major_to_4d(x: Tensor) -> Tensor:
    """View a contiguous ``[B, M, C]`` tensor as a channels-last ``[B, C, M, 1]`` tensor (no copy)."""
    return x.unsqueeze(2).permute(0, 3, 1, 2)


class FastConvTasNet(nn.Module):
    """Inference-only Conv-TasNet built from a plain :class:`ConvTasNet` (same outputs, faster on CPU).

    The decoder is a grouped 1x1 conv from each source's ``N`` features to its ``L`` frame samples
    on the channels-last masked features, then the plain model's overlap-add.
    """

    def __init__(self, model: ConvTasNet, fold_norm_scales: bool = True) -> None:
        super().__init__()
        self.num_sources, self.enc_kernel_size, self.stride = model.num_sources, model.enc_kernel_size, model.stride
        self.encoder = model.encoder
        self.encoder_act = model.encoder_act
        self.masker = FastTemporalConvNet(model.masker, fold_norm_scales)
        decoder = model.decoder.weight.squeeze(1).t().repeat(self.num_sources, 1).unsqueeze(2)  # [S*L, N, 1]
        self.decoder = FusedConv(decoder, None, groups=self.num_sources)

    def forward(self, mixture: Tensor) -> Tensor:
        if mixture.dim() != 2:
            raise ValueError(f"ConvTasNet expects a [batch, time] mixture, got shape {tuple(mixture.shape)}")
        batch, num_samples = mixture.shape
        left, right = tasnet_padding(num_samples, self.enc_kernel_size, self.stride)
        padded = F.pad(mixture, (left, right))  # [B, T'']
        # the activation sees the plain model's [B, N, M] (a per-channel one, a PReLU(N), saw [B, M, N]: reviewer)
        features = self.encoder_act(self.encoder(padded.unsqueeze(1))).transpose(1, 2).contiguous()  # [B, M, N]
        masks = self.masker(time_major_to_4d(features))  # [B, M, S, N]
        masked = time_major_to_4d((masks * features.unsqueeze(2)).flatten(2))  # [B, S*N, M, 1]
        frames = self.decoder(masked).squeeze(3).unflatten(1, (self.num_sources, -1))  # [B, S, L, M]
        frames = frames.reshape(batch * self.num_sources, self.enc_kernel_size, -1)  # [B*S, L, M]
        signal = overlap_add(frames, self.stride)  # [B*S, T'']
        return signal.view(batch, self.num_sources, -1)[..., left : left + num_samples]


def fold_quartznet_batchnorms(model: QuartzNet) -> None:
    """Fold each norm of ``model`` that is affine at inference into the conv before it, in place (exact)."""
    for block in model.blocks:
        for layer in block.layers:
            affine = inference_affine(layer.norm)
            if affine is None:
                continue
            if layer.pointwise is not None:
                layer.pointwise = fold_affine_into_conv(layer.pointwise, *affine)
            else:
                layer.conv = fold_affine_into_conv(layer.conv, *affine)
            layer.norm = Identity()
        residual = block.residual
        affine = None if residual is None else inference_affine(residual.norm)
        if affine is not None:
            residual.conv, residual.norm = fold_affine_into_conv(residual.conv, *affine), Identity()


class Normalize(nn.Module):
    """A registry norm's statistics without its per-channel affine (that went into the next layer)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        return self.norm.normalize(x)


@torch.no_grad()
def _norm_into_linear(norm: nn.Module, linear: nn.Linear) -> tuple[nn.Module, nn.Linear]:
    """``(stats, linear')`` with ``linear'(stats(x)) == linear(norm(x))`` along the channel dim."""
    affine = norm_affine(norm)
    if affine is None:
        return norm, linear
    scale, shift = affine
    weight = linear.weight  # [out, in]
    bias = weight @ shift + (0.0 if linear.bias is None else linear.bias)
    fused = nn.Linear(linear.in_features, linear.out_features).to(weight.device, weight.dtype)
    fused.weight.copy_(weight * scale)
    fused.bias.copy_(bias)
    stats = nn.Identity() if inference_affine(norm) is not None else Normalize(norm)
    return stats, fused


@torch.no_grad()
def _norm_into_stack(stack: nn.Module, norm: nn.Module) -> nn.Module:
    """Compose an inference-affine ``norm`` after ``stack`` into its final LayerNorm; returns the norm left."""
    affine = inference_affine(norm)
    if affine is None or not isinstance(stack, SequenceStack) or not stack.norm.elementwise_affine:
        return norm
    scale, shift = affine
    stack.norm.bias.copy_(stack.norm.bias * scale + shift)
    stack.norm.weight.mul_(scale)
    return Identity()


def fold_masknet_norms(model: MaskingSeparator, into_linear: bool = True) -> None:
    """Fold the mask network's norms of a SepFormer-family model into their neighbours, in place (exact);
    ``into_linear=False`` leaves the input norm out of the bottleneck linear (see ``fold_norm_scales``)."""
    masker = model.masker
    if isinstance(masker, DualPathMasker):
        if into_linear and type(masker.bottleneck) is nn.Linear:  # a FusedLinear when prepared before
            masker.norm, masker.bottleneck = _norm_into_linear(masker.norm, masker.bottleneck)
        for block in masker.blocks:
            block.intra_norm = _norm_into_stack(block.intra, block.intra_norm)
            block.inter_norm = _norm_into_stack(block.inter, block.inter_norm)
    elif isinstance(masker, ChunkSummaryMasker):
        for norms, stacks in ((masker.intra_norms, masker.intra), (masker.inter_norms, masker.inter)):
            for index, stack in enumerate(stacks):
                norms[index] = _norm_into_stack(stack, norms[index])
