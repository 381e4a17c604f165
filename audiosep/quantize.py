"""Dynamic int8 inference: the inference transform, then int8 matrix products in every linear layer.

:func:`quantize_for_inference` runs :func:`audiosep.optimize.prepare_for_inference` and swaps every
linear layer (SepFormer family: attention projections, feed-forward layers with their ReLU, mask network) and every
pointwise (1x1, ungrouped) convolution of the prepared Conv-TasNet for a module calling torch's
dynamic-quantization kernel ``quantized::linear_dynamic``: weights int8 per output channel (symmetric,
scale = max |w| / 127), activations quantized per call at run time, output float32. The plain model
is never modified; depthwise and grouped convolutions, norms and the encoder stay float32 (the decoder
too, unless one source makes its grouped conv an ungrouped 1x1 one).

Why our own two small modules rather than ``torch.ao.quantization.quantize_dynamic``: it quantizes
``nn.Linear`` only, per tensor by default, and cannot see the prepared Conv-TasNet's fused 1x1
convolutions, which hold most of its MACs; both call the same kernel. The weights are packed for
oneDNN when this torch has it (faster than fbgemm on this project's small matrices, measured), else
for the best engine available (x86, fbgemm, qnnpack on ARM).

On x86 CPUs without VNNI the int8 kernels add pairs of uint8 x int8 products in int16
(``vpmaddubsw``), which saturates: activations are then quantized to 7 bits (``reduce_range``, as
``torch.ao`` does for fbgemm), else a 1 % layer error grows to 23 % (measured on an AVX2 EPYC).
"""

from __future__ import annotations

import contextlib
import functools
import platform
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiosep.optimize import (
    FusedActivation,
    FusedConv,
    FusedLinear,
    NormDepthwise,
    prepare_for_inference,
    user_subclass,
)

ENGINE_PREFERENCE = ("onednn", "x86", "fbgemm", "qnnpack")


@functools.lru_cache(maxsize=1)
def reduced_activation_range() -> bool:
    """Whether activations must be 7-bit: an x86 CPU whose flags (``/proc/cpuinfo``) show no VNNI."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
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
    with warnings.catch_warnings():  # quantized tensor creation is deprecated for a future torch, not 2.x
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        return torch.quantize_per_channel(weight, scales, zero_points, axis=0, dtype=torch.qint8)


class Int8Linear(nn.Module):
    """``activation(x @ W^T + b)`` over the last dim with int8 weights (``quantized::linear_dynamic``).

    The packed weights are not in ``state_dict`` (an int8 model is made from a float one, not saved);
    a copy or pickle repacks them for the engine they were packed for, so it computes the same numbers.

    Args:
        weight: float ``[C_out, C_in]``, quantized per output channel.
        bias: ``[C_out]`` or None.
        activation, slope: as in :class:`audiosep.optimize.FusedConv` (``prelu`` is a leaky ReLU).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, activation: FusedActivation = "none",
                 slope: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.activation, self.slope = activation, float(slope)
        self.engine = quantized_engine()
        self.reduce_range = self.engine != "qnnpack" and reduced_activation_range()
        bias = None if bias is None else bias.detach().float().clone()
        self._pack(quantize_weight(weight), bias)

    def _pack(self, weight: Tensor, bias: Tensor | None) -> None:
        with _engine(self.engine):
            self._packed = torch.ops.quantized.linear_prepack(weight, bias)
        self._weight: Tensor | None = None

    def __getstate__(self) -> dict:
        """For copies and pickles: the int8 weight and bias, not the engine-specific packed object (which
        unpickles packed for the process's current engine, not :attr:`engine`: outputs moved by 2.6e-4)."""
        state = self.__dict__.copy()
        state["_packed"] = torch.ops.quantized.linear_unpack(self._packed)
        state["_weight"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        weight, bias = state.pop("_packed")
        self.__dict__.update(state)
        self._pack(weight, bias)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features).float()
        # A ReLU runs inside the kernel (``linear_relu_dynamic``): no pass over the feed-forward hidden layer,
        # the widest tensor of a transformer layer.
        kernel = torch.ops.quantized.linear_relu_dynamic if self.activation == "relu" else torch.ops.quantized.linear_dynamic
        y = kernel(flat, self._packed, self.reduce_range).view(*x.shape[:-1], self.out_features)
        # In place: ``y`` is the kernel's fresh output (no autograd through int8 kernels), so the
        # activation needs no second buffer of the layer's widest tensor.
        if self.activation == "prelu":
            return F.leaky_relu_(y, self.slope)
        return y.sigmoid_() if self.activation == "sigmoid" else y

    @property
    def weight(self) -> Tensor:
        """The int8 weight as float ``[C_out, C_in]`` (what the kernel multiplies by).

        Unpacked once, on first use: some models read a layer's ``weight.shape`` in every forward.
        """
        if self._weight is None:
            self._weight = torch.ops.quantized.linear_unpack(self._packed)[0].dequantize()
        return self._weight

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, activation={self.activation}, engine={self.engine}, "
                f"reduce_range={self.reduce_range}")


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


def is_pointwise(conv: FusedConv) -> bool:
    """Whether a fused conv is a plain 1x1 channel mix (the ones :class:`Int8PointwiseConv` replaces)."""
    kernel = conv.weight.shape[2]
    return kernel == 1 and conv.groups == 1 and conv.padding == 0


def _swap_children(module: nn.Module) -> int:
    """Replace the fused linear layers and pointwise fused convs below ``module`` in place; returns how many."""
    swapped = 0
    for name, child in module.named_children():
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
        ValueError: the model is not float32 (the int8 kernels take and give float32), holds a user's
            subclass of a layer (see :func:`audiosep.optimize.prepare_for_inference`), or has no layer
            to quantize (nothing would change).
    """
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtypes - {torch.float32}:
        raise ValueError(f"int8 inference needs a float32 model; {type(model).__name__} has "
                         f"{', '.join(sorted(str(d).removeprefix('torch.') for d in dtypes))} weights: .float() it first")  # fmt: skip
    subclass = user_subclass(model)
    if subclass is not None:
        raise ValueError(f"int8 inference rebuilds the layers from their weights, and {subclass} subclasses an "
                         "audiosep or torch.nn layer (it may compute something else): run it in float32")  # fmt: skip
    prepared = prepare_for_inference(model, fold_norm_scales=False).cpu()  # a copy: the caller's model stays put
    swapped = _swap_children(prepared)
    if swapped == 0:
        raise ValueError(f"{type(model).__name__} has no linear or pointwise-conv layer to quantize")
    prepared.int8_layers = swapped
    return prepared.eval()
