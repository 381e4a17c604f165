"""Dynamic int8 inference: the inference transform, then int8 matrix products in every linear layer.

:func:`quantize_for_inference` runs :func:`audiosep.optimize.prepare_for_inference` and swaps every
linear layer (SepFormer family: attention projections, feed-forward layers with their ReLU, mask network) and every
pointwise (1x1, ungrouped) convolution of the prepared Conv-TasNet for an :class:`Int8Linear`: weights int8
per output channel (symmetric, scale = max |w| / 127), activations quantized per tensor at run time (uint8
with the range and zero point torch's dynamic quantization picks), output float32. The plain model is
never modified; depthwise and grouped convolutions, norms and the encoder stay float32 (the decoder too,
unless one source makes its grouped conv an ungrouped 1x1 one).

The kernel: oneDNN's ``qlinear_pointwise`` where this torch has it and the CPU has VNNI (without VNNI, for
Conv-TasNet's layers only: :func:`best_int8_kernel`), fed by our own quantization pass, with the activation
(ReLU, PReLU) and, in Conv-TasNet's blocks, the residual and skip sums applied as it writes its output
(:class:`Int8ResidualSkip`); else torch's ``quantized::linear_dynamic``. On this project's layer shapes the first was 1.1-1.45x faster per layer
where its output's memory is reused (its matrix product uses AMX on Sapphire Rapids; ``linear_dynamic``
quantizes through a slower oneDNN reorder; a fresh 8 MB output each call costs both ~1 ms of page faults);
with it, ``conv_tasnet_base``'s int8 over fp32 went from 1.39-1.41x to 1.62-1.68x at 4 s
(A/B of two runs each, 2 threads, Sapphire Rapids).

Why our own small modules rather than ``torch.ao.quantization.quantize_dynamic``: it quantizes
``nn.Linear`` only, per tensor by default, and cannot see the prepared Conv-TasNet's fused 1x1
convolutions, which hold most of its MACs. The weights are packed for oneDNN when this torch has it
(faster than fbgemm on this project's small matrices, measured), else for the best engine available
(x86, fbgemm, qnnpack on ARM).

On x86 CPUs without VNNI the int8 kernels add pairs of uint8 x int8 products in int16
(``vpmaddubsw``), which saturates: activations are then quantized to 7 bits (``reduce_range``, as
``torch.ao`` does for fbgemm), else a 1 % layer error grows to 23 % (measured on an AVX2 EPYC).
"""

from __future__ import annotations

import contextlib
import functools
import math
import platform
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiosep.models.conv_tasnet import ConvTasNet
from audiosep.optimize import (
    FastConvBlock,
    FusedActivation,
    FusedConv,
    FusedLinear,
    NormDepthwise,
    prepare_for_inference,
    time_major_to_4d,
    user_subclass,
)

ENGINE_PREFERENCE = ("onednn", "x86", "fbgemm", "qnnpack")


def x86_cpu() -> bool:
    """Whether this process runs on an x86 CPU."""
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


@functools.lru_cache(maxsize=1)
def reduced_activation_range() -> bool:
    """Whether activations must be 7-bit: an x86 CPU whose flags (``/proc/cpuinfo``) show no VNNI."""
    if not x86_cpu():
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return True  # cannot tell: the saturation-safe choice
    return "vnni" not in flags


def quantized_engine() -> str:
    """The quantized engine weights are packed for (the first of :data:`ENGINE_PREFERENCE` this torch has)."""
    supported = torch.backends.quantized.supported_engines
    for engine in ENGINE_PREFERENCE:
        if engine in supported:
            return engine
    raise RuntimeError(f"this torch build has no quantized engine (supported: {supported})")


@contextlib.contextmanager
def _engine(name: str) -> Iterator[None]:
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def quantize_weight(weight: Tensor) -> Tensor:
    """``weight[C_out, C_in]`` as a per-output-channel symmetric qint8 tensor."""
    weight = weight.detach().float()
    scales = (weight.abs().amax(dim=1) / 127).clamp_min(1e-12).double()
    zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
    with _quantized_tensors():
        return torch.quantize_per_channel(weight, scales, zero_points, axis=0, dtype=torch.qint8)


@contextlib.contextmanager
def _quantized_tensors() -> Iterator[None]:
    """Quantized tensor creation is deprecated for a future torch, not 2.x: its warning is not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        yield


@functools.lru_cache(maxsize=1)
def onednn_int8_linear_available() -> bool:
    """Whether this torch has oneDNN's int8 linear with float output (x86 builds with oneDNN)."""
    try:
        torch.ops.onednn.qlinear_pointwise, torch.ops.onednn.qlinear_prepack  # noqa: B018 (a lookup that may fail)
    except (AttributeError, RuntimeError):
        return False
    return torch.backends.mkldnn.is_available()


SMALL_SCALE = float(np.float32(6.1e-5))  # torch's SMALL_SCALE_THRESHOLD: the finest activation step it uses
FLOAT32_MAX = float(np.finfo(np.float32).max)


class QuantizedInput(NamedTuple):
    """A float activation as uint8 ``values`` with ``scale`` and ``zero_point`` (``x ~ scale * (q - zp)``)."""

    values: Tensor
    scale: float
    zero_point: int


def activation_qparams(low: float, high: float, reduce_range: bool = False) -> tuple[float, int]:
    """The scale and zero point torch's dynamic int8 kernels pick for values in ``[low, high]``.

    A port of ATen's ``ChooseQuantizationParams`` (uint8, 0..255, or 0..127 with ``reduce_range``; range
    widened to hold 0, steps below :data:`SMALL_SCALE` widened to it), so the oneDNN kernel computes what
    ``quantized::linear_dynamic`` does.
    """
    qmax = 127 if reduce_range else 255
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / qmax
    single = float(np.float32(scale))  # ATen tests the float32 step: zero, or a reciprocal beyond float32
    if single == 0.0 or 1.0 / single > FLOAT32_MAX:
        scale = 0.1
    if scale < SMALL_SCALE:
        amplifier, scale = SMALL_SCALE / scale, SMALL_SCALE
        if low == 0.0:
            high = SMALL_SCALE * qmax
        elif high == 0.0:
            low = -SMALL_SCALE * qmax
        else:
            low, high = low * amplifier, high * amplifier
    from_low, from_high = -low / scale, qmax - high / scale
    zero_point = from_low if -abs(low / scale) < qmax - abs(high / scale) else from_high
    return scale, int(min(max(round(zero_point), 0), qmax))  # round(): nearest, ties to even, as nearbyint


def quantize_input(x: Tensor, reduce_range: bool = False) -> QuantizedInput:
    """``x[rows, C]`` quantized per tensor for :meth:`Int8Linear.run` (one pass for the range, one to round);
    ``reduce_range``: to 7 bits (0..127, as torch's kernels; a value at a rounding tie of the zero point may
    reach 128, and 2 x 128 x 127 still fits the int16 pair sums of CPUs without VNNI).

    Raises:
        ValueError: ``x`` holds NaN or Inf (no int8 range covers them).
    """
    x = x.contiguous()  # torch 2.14's quantize_per_tensor reads a strided input as if it were contiguous
    if x.numel() == 0:
        return QuantizedInput(torch.empty(x.shape, dtype=torch.uint8), 1.0, 0)
    low, high = (float(v) for v in torch.aminmax(x))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("an int8 layer's input holds NaN or Inf")
    scale, zero_point = activation_qparams(low, high, reduce_range)
    with _quantized_tensors():
        quantized = torch.quantize_per_tensor(x, scale, zero_point, torch.quint8)
    # Its bytes as a plain uint8 tensor, without a copy (``int_repr`` copies; ``view(torch.uint8)`` keeps the
    # quantized backend, where most ops fail or crash).
    values = torch.empty(0, dtype=torch.uint8).set_(quantized.untyped_storage(), 0, quantized.shape, quantized.stride())
    return QuantizedInput(values, scale, zero_point)


Int8Kernel = Literal["onednn", "dynamic"]


def best_int8_kernel(engine: str, reduce_range: bool, post_op: bool = False) -> Int8Kernel:
    """oneDNN's kernel where weights are packed for oneDNN on an x86 CPU and this torch has it: on CPUs with VNNI
    for every layer; without (7-bit activations, ``reduce_range``) only for a layer whose PReLU or residual/skip
    sum it applies as it writes (``post_op``; torch's kernel needs one more pass for it). Else torch's.

    Measured on an AVX2 EPYC (interleaved, 2 threads, int8 over fp32), oneDNN for every layer against torch's
    kernel for every layer: ``conv_tasnet_base`` 1.36-1.37x against 1.13x at 4 s, even at 1 s; RE-SepFormer
    1.01-1.17x against 1.11-1.26x at 1 s (our quantization pass costs more than torch's inside its kernel
    there), 1.24-1.28x against 1.19-1.23x at 4 s. With this choice ``conv_tasnet_base`` ran 1.32x (``audiosep
    bench``) and 1.39x (``benchmarks/int8_bound.py``) at 4 s.
    """
    if not (engine == "onednn" and x86_cpu() and onednn_int8_linear_available()):
        return "dynamic"
    return "onednn" if not reduce_range or post_op else "dynamic"


def activation_reduce_range(engine: str) -> bool:
    """Whether layers packed for ``engine`` take 7-bit activations here (x86 without VNNI; qnnpack never)."""
    return engine != "qnnpack" and reduced_activation_range()


# Int8Linear's activations as oneDNN post-ops (run as the kernel writes its output); sigmoid is not one.
ONEDNN_POST_OPS: dict[str, str] = {"none": "none", "relu": "relu", "prelu": "leaky_relu", "sigmoid": "none"}


class Int8Linear(nn.Module):
    """``activation(x @ W^T + b)`` over the last dim with int8 weights.

    Two kernels, one quantization (the activations quantised per call with the same range and zero point;
    values within float rounding of half a step may round apart, so model outputs agreed to 41-73 dB in a
    reviewer's runs): oneDNN's ``qlinear_pointwise`` where :func:`best_int8_kernel` picks it (our own
    quantisation pass and the activation as a post-op; speed in the module docstring), else torch's
    ``quantized::linear_dynamic``.

    The packed weights are not in ``state_dict`` (an int8 model is made from a float one, not saved);
    a copy or pickle repacks them for the engine they were packed for, so it computes the same numbers,
    unless it is loaded on a CPU that needs other settings (no VNNI: 7-bit activations, and the kernel
    :func:`best_int8_kernel` picks there).

    Args:
        weight: float ``[C_out, C_in]``, quantized per output channel.
        bias: ``[C_out]`` or None.
        activation, slope: as in :class:`audiosep.optimize.FusedConv` (``prelu`` is a leaky ReLU).
        kernel: which kernel runs it; by default :func:`best_int8_kernel`'s choice.
        adds_into_sums: the layer's output is added into a running sum (:meth:`run` with ``total``), which
            oneDNN's kernel does as it writes: that choice counts it as a post-op.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, activation: FusedActivation = "none",
                 slope: float = 0.0, kernel: Int8Kernel | None = None, adds_into_sums: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.activation, self.slope = activation, float(slope)
        self.post_op = adds_into_sums or activation == "prelu"
        self.engine = quantized_engine()
        self.reduce_range = activation_reduce_range(self.engine)
        self.kernel = best_int8_kernel(self.engine, self.reduce_range, self.post_op) if kernel is None else kernel
        if self.kernel == "onednn" and not onednn_int8_linear_available():
            raise ValueError("this torch has no oneDNN int8 linear kernel")
        bias = None if bias is None else bias.detach().float().clone()
        self._pack(quantize_weight(weight), bias)

    def _pack(self, weight: Tensor, bias: Tensor | None) -> None:
        self._qweight, self._bias, self._weight = weight, bias, None
        if self.kernel == "onednn":
            self._packed = torch.ops.onednn.qlinear_prepack(weight.int_repr(), None)
            self._scales = weight.q_per_channel_scales().float()
            self._zero_points = torch.zeros(self.out_features, dtype=torch.long)
        else:
            with _engine(self.engine):
                self._packed = torch.ops.quantized.linear_prepack(weight, bias)

    def __getstate__(self) -> dict:
        """For copies and pickles: the int8 weight and bias, not the engine-specific packed object (which
        unpickles packed for the process's current engine, not :attr:`engine`: outputs moved by 2.6e-4)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_packed", "_scales", "_zero_points", "_weight")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if activation_reduce_range(self.engine) and not self.reduce_range:  # saved on a VNNI CPU, loaded on one without
            self.reduce_range, self.kernel = True, best_int8_kernel(self.engine, True, self.post_op)
        self._pack(self._qweight, self._bias)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features).float()
        if self.kernel == "onednn":
            y = self.run(quantize_input(flat, self.reduce_range))
        else:
            # A ReLU runs inside the kernel (``linear_relu_dynamic``): no pass over the feed-forward hidden
            # layer, the widest tensor of a transformer layer.
            kernel = torch.ops.quantized.linear_relu_dynamic if self.activation == "relu" else torch.ops.quantized.linear_dynamic
            try:
                y = kernel(flat, self._packed, self.reduce_range)
            except RuntimeError as err:  # NaN: "In ChooseQuantizationParams, min should be less than or equal to max"
                if not torch.isfinite(flat).all():
                    raise ValueError("an int8 layer's input holds NaN or Inf") from err
                raise
            if self.activation == "prelu":  # in place: ``y`` is the kernel's fresh output
                y = F.leaky_relu_(y, self.slope)
        if self.activation == "sigmoid":
            y = y.sigmoid_()
        return y.view(*x.shape[:-1], self.out_features)

    def run(self, x: QuantizedInput, total: Tensor | None = None) -> Tensor:
        """The product of an input quantized by :func:`quantize_input`, added into ``total`` when given.

        ``total`` (float32 ``[rows, C_out]``, contiguous; layers without activation only) is updated in place
        and returned: the kernel adds its output as it writes it, instead of one more pass over three
        tensors. No sigmoid here (it is not a oneDNN post-op: :meth:`forward` applies it). oneDNN kernel only.
        """
        if self.kernel != "onednn":
            raise RuntimeError("Int8Linear.run needs the oneDNN kernel; call the layer instead")
        if x.values.dtype != torch.uint8 or x.values.dim() != 2 or x.values.shape[1] != self.in_features:
            raise ValueError(f"the input must be uint8 [rows, {self.in_features}] from quantize_input, "
                             f"got {x.values.dtype} {tuple(x.values.shape)}")  # fmt: skip
        post_op = ONEDNN_POST_OPS[self.activation]
        args = [self.slope] if post_op == "leaky_relu" else []
        common = (x.values, x.scale, x.zero_point, self._packed, self._scales, self._zero_points)
        if total is None:
            return torch.ops.onednn.qlinear_pointwise(*common, self._bias, 1.0, 0, torch.float32, post_op, args, "")
        if self.activation != "none":  # oneDNN would apply it to the sum, not to the product alone
            raise ValueError(f"only a layer without activation adds into a total, not one with {self.activation}")
        if not total.is_contiguous() or total.shape != (x.values.shape[0], self.out_features) or total.dtype != torch.float32:
            raise ValueError(f"total must be a contiguous float32 [{x.values.shape[0]}, {self.out_features}] tensor")
        # oneDNN's "sum" post-op writes into ``total`` (its memory is taken as contiguous: checked above)
        return torch.ops.onednn.qlinear_pointwise.binary(*common, total, self._bias, 1.0, 0, torch.float32, 1.0, 0,
                                                         "sum", 1.0, post_op, args, "")  # fmt: skip

    @property
    def weight(self) -> Tensor:
        """The int8 weight as float ``[C_out, C_in]`` (what the kernel multiplies by).

        Dequantized once, on first use: some models read a layer's ``weight.shape`` in every forward.
        """
        if self._weight is None:
            self._weight = self._qweight.dequantize()
        return self._weight

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, activation={self.activation}, kernel={self.kernel}, "
                f"engine={self.engine}, reduce_range={self.reduce_range}")


class Int8PointwiseConv(nn.Module):
    """A pointwise :class:`FusedConv` on channels-last ``[B, C, M, 1]`` as one int8 matrix product.

    Channels-last makes ``[B, C, M, 1]`` a ``[B*M, C]`` matrix without a copy; the output is
    returned channels-last again, so the layers around it see what :class:`FusedConv` gave them.
    """

    def __init__(self, conv: FusedConv) -> None:
        super().__init__()
        self.linear = Int8Linear(conv.weight[..., 0, 0], conv.bias, conv.activation, conv.slope)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # [B, M, 1, C_out] viewed channels-last


class Int8ResidualSkip(nn.Module):
    """A Conv-TasNet block's output 1x1 conv in int8, added into the TCN's residual and skip sums.

    Its rows (residual, then skip) become two int8 layers with the same per-row weights; on the oneDNN
    kernel both take one quantized input and add their products into the sums as they write them
    (two passes over three tensors fewer per block than ``x + out[:, :R]``, ``skips + out[:, R:]``).
    """

    def __init__(self, conv: FusedConv, residual_channels: int) -> None:
        super().__init__()
        weight, bias = conv.weight[..., 0, 0], conv.bias
        rows = slice(0, residual_channels), slice(residual_channels, weight.shape[0])
        self.residual, self.skip = (
            Int8Linear(weight[part], None if bias is None else bias[part], adds_into_sums=True)
            if part.stop > part.start else None
            for part in rows
        )  # fmt: skip

    def forward(self, h: Tensor, x: Tensor, skips: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``(x + residual(h), skips + skip(h))`` for channels-last ``[B, C, M, 1]`` tensors; ``x`` and
        ``skips`` (the TCN's own sums) are updated in place where the kernel allows."""
        rows = _rows(h)
        first = self.residual if self.residual is not None else self.skip
        quantized = quantize_input(rows, first.reduce_range) if first.kernel == "onednn" else None  # one for both

        def add(layer: Int8Linear, total: Tensor | None) -> Tensor:
            """``total + layer(h)`` channels-last (the product alone without ``total``)."""
            if quantized is None:
                out = time_major_to_4d(layer(rows).unflatten(0, (h.shape[0], -1)))
                return out if total is None else total + out
            product = layer.run(quantized, None if total is None else _sum_rows(total))  # into total
            return time_major_to_4d(product.unflatten(0, (h.shape[0], -1)))

        if self.residual is not None:
            x = add(self.residual, x)
        if self.skip is not None:
            skips = add(self.skip, skips)
        return x, skips


def _rows(x: Tensor) -> Tensor:
    """Channels-last ``[B, C, M, 1]`` as its ``[B*M, C]`` matrix (a view when ``x`` is contiguous so)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _sum_rows(total: Tensor) -> Tensor:
    """A running sum's ``[B*M, C]`` matrix to add into: a view of ``total``, made contiguous first if need be."""
    return total.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).view(-1, total.shape[1])


def is_pointwise(conv: FusedConv) -> bool:
    """Whether a fused conv is a plain 1x1 channel mix (the ones :class:`Int8PointwiseConv` replaces)."""
    kernel = conv.weight.shape[2]
    return kernel == 1 and conv.groups == 1 and conv.padding == 0


def _swap_children(module: nn.Module) -> int:
    """Replace the fused linear layers and pointwise fused convs below ``module`` in place; returns how many."""
    swapped = 0
    for name, child in module.named_children():
        if isinstance(child, FastConvBlock) and child.out.float_weights:
            child.out.conv = Int8ResidualSkip(child.out.conv, child.residual_channels)
            swapped += 1 + _swap_children(child)
            continue
        if isinstance(child, NormDepthwise):  # a depthwise conv (1x1 only when one channel wide): no matmul
            continue
        if isinstance(child, FusedLinear):  # every linear layer, after prepare_for_inference
            setattr(module, name, Int8Linear(child.weight, child.bias, child.activation))
            swapped += 1
        elif isinstance(child, FusedConv) and is_pointwise(child):
            setattr(module, name, Int8PointwiseConv(child))
            swapped += 1
        else:
            swapped += _swap_children(child)
    return swapped


def quantize_for_inference(model: nn.Module) -> nn.Module:
    """A new eval-mode CPU module: ``prepare_for_inference(model)`` with int8 linear layers.

    The norms before the quantized layers keep their per-channel scales (``fold_norm_scales=False``):
    folded into the weights, one large scale coarsens the int8 step of every weight in its row.

    Raises:
        ValueError: the model is int8 already, or not float32 (the int8 kernels take and give float32), holds a user's
            subclass of a layer (see :func:`audiosep.optimize.prepare_for_inference`), or has no layer
            to quantize (nothing would change).
    """
    if any(isinstance(m, Int8Linear) for m in model.modules()):  # every int8 layer holds one
        raise ValueError(f"{type(model).__name__} is int8 already (quantize_for_inference's output); quantize the "
                         "float model it was made from")  # fmt: skip
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtypes - {torch.float32}:
        raise ValueError(f"int8 inference needs a float32 model; {type(model).__name__} has "
                         f"{', '.join(sorted(str(d).removeprefix('torch.') for d in dtypes))} weights: .float() it first")  # fmt: skip
    subclass = user_subclass(model)
    if subclass is not None:
        raise ValueError(f"int8 inference rebuilds the layers from their weights, and {subclass} subclasses an "
                         "audiosep or torch.nn layer (it may compute something else): run it in float32")  # fmt: skip
    prepared = prepare_for_inference(model, fold_norm_scales=False).cpu()  # a copy: the caller's model stays put
    if type(prepared) is ConvTasNet:  # left untransformed (its warning says which layer): no fused 1x1 to swap
        raise ValueError(f"int8 inference runs the fast {type(model).__name__}, and this one holds a layer it cannot "
                         "fuse (see the warning): run it in float32")  # fmt: skip
    swapped = _swap_children(prepared)
    if swapped == 0:
        raise ValueError(f"{type(model).__name__} has no linear or pointwise-conv layer to quantize")
    prepared.int8_layers = swapped
    return prepared.eval()
