"""Multiply-accumulates of a forward pass, attention included; the memory its activations hold at once.

``torch.utils.flop_counter.FlopCounterMode`` counts convolutions and matmuls but not every
attention kernel (on CPU it counts the fused ``scaled_dot_product_attention`` op as zero): the
attention products are added here from their shapes, ``2 * B * H * L_q * L_k * (D / H)``
(``Q K^T`` and ``A V``), in place of whatever the counter attributed to the fused op.
"""

from __future__ import annotations

import copy
import logging
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from audiosep.nn.attention import MultiHeadSelfAttention

log = logging.getLogger(__name__)

UNCOUNTED_NAMESPACES = frozenset({"mkldnn", "onednn", "quantized"})  # fused CPU kernels FlopCounterMode counts as 0
# Modules of the inference transforms and of torch's quantization: layers that compute the plain model's
# outputs with other kernels (fused, int8, explicit attention products the hooks below would count again).
TRANSFORM_MODULES = ("audiosep.optimize", "audiosep.quantize", "torch.ao.", "torch.nn.quantized", "torch.nn.intrinsic")


def transformed_layer(model: nn.Module) -> str | None:
    """The class name of the first layer of ``model`` made by an inference transform or torch's
    quantization (see :data:`TRANSFORM_MODULES`); None for a plain model."""
    for module in model.modules():
        if type(module).__module__.startswith(TRANSFORM_MODULES):
            return type(module).__name__
    return None


class _FusedOps(TorchDispatchMode):
    """Records the ops of :data:`UNCOUNTED_NAMESPACES` a forward pass runs."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's protocol)
        if func.namespace in UNCOUNTED_NAMESPACES:
            self.seen.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def count_macs(model: nn.Module, *inputs: Tensor) -> float:
    """MACs of ``model(*inputs)`` (flops / 2), fused attention counted from its shapes.

    Raises:
        ValueError: ``model`` is a prepared or int8 model (a layer of :mod:`audiosep.optimize`,
            :mod:`audiosep.quantize` or torch's quantization), or its forward pass runs fused kernels
            the counter cannot see: count its plain model.
    """
    transformed = transformed_layer(model)
    if transformed is not None:  # its kernels may be fused (counted as 0) or count attention twice
        raise ValueError(f"{type(model).__name__} is prepared or int8 ({transformed}): its MACs cannot be counted "
                         "reliably; count the plain model it was prepared from")  # fmt: skip
    attention = 0.0

    def add_attention(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal attention
        batch, length, dim = args[0].shape
        attention += 2.0 * batch * length * length * module.qkv.out_features / 3

    handles = [m.register_forward_hook(add_attention) for m in model.modules() if isinstance(m, MultiHeadSelfAttention)]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter, _FusedOps() as fused_ops:
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    if fused_ops.seen:
        raise ValueError(f"{type(model).__name__} runs fused kernels whose MACs cannot be counted "
                         f"({', '.join(sorted(fused_ops.seen))}); count the plain model it was prepared from")
    fused = counter.get_flop_counts().get("Global", {})
    counted_attention = sum(count for op, count in fused.items() if "scaled_dot_product" in str(op))
    return (counter.get_total_flops() - counted_attention) / 2 + attention


class _LiveBytes(TorchDispatchMode):
    """Bytes of the storages the ops of a forward pass made that are still alive: now and at the peak.

    Each storage counts once, while any tensor on it lives (views, reshapes and in-place results share their
    input's storage); the storages given as ``external`` (weights, inputs) never count. A tensor's claim ends when
    Python frees it (a weakref finalizer).
    """

    def __init__(self, external: set[int]) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._external = external
        self._tensors: dict[int, int] = {}  # storage -> tensors alive on it

    def _release(self, storage: int, nbytes: int) -> None:
        self._tensors[storage] -= 1
        if not self._tensors[storage]:
            del self._tensors[storage]
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's protocol)
        output = func(*args, **(kwargs or {}))
        if func._schema.is_mutable:  # in place, or into an ``out=`` tensor the caller made
            return output
        inputs = {id(t) for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)}
        for tensor in tree_leaves(output):
            if not isinstance(tensor, Tensor) or id(tensor) in inputs:
                continue
            storage = tensor.untyped_storage()
            key, nbytes = storage._cdata, storage.nbytes()
            if key in self._external:
                continue
            if key not in self._tensors:
                self._tensors[key] = 0
                self.live += nbytes
                self.peak = max(self.peak, self.live)
            self._tensors[key] += 1
            weakref.finalize(tensor, self._release, key, nbytes)
        return output


class _FusedAttention(TorchFunctionMode):
    """``scaled_dot_product_attention`` as its fused kernels run it, memory-wise: only the output is made.

    On the meta device it would run the math path, whose ``[L, L]`` weights the fused CPU and GPU kernels
    never hold (an estimate 100 times too high for long attention: reviewer).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's protocol)
        if func is F.scaled_dot_product_attention:
            query, value = args[0], (args[2] if len(args) > 2 else kwargs["value"])
            return query.new_empty((*query.shape[:-1], value.shape[-1]))
        return func(*args, **(kwargs or {}))


def activation_peak_bytes(model: nn.Module, *inputs: Tensor) -> int:
    """The most bytes the tensors made by ``model(*inputs)`` (no autograd) hold at once, output included.

    Run on a copy of ``model`` on the meta device: shapes only, nothing allocated, so a model file whose
    activations would not fit in memory is found before it runs. Attention is counted as the fused kernels
    run it (its output only). A kernel's own workspace is not seen.
    """
    meta, meta_inputs = meta_copy(model), [x.to("meta") for x in inputs]
    external = {t.untyped_storage()._cdata for t in (*meta.parameters(), *meta.buffers(), *meta_inputs)}
    # one fixed mode whatever the caller's: ops decompose differently under inference mode
    with torch.inference_mode(False), torch.no_grad(), _FusedAttention(), _LiveBytes(external) as live:
        meta(*meta_inputs)
    return live.peak


def estimated_peak_mib(model: nn.Module, *inputs: Tensor) -> float | None:
    """:func:`activation_peak_bytes` in MiB, or None when the model cannot run on the meta device (an op without a
    meta kernel): no estimate, and nothing refused for it."""
    try:
        return activation_peak_bytes(model, *inputs) / 2**20
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as err:
        log.debug("no memory estimate on the meta device: %s", err)
        return None


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose weights and buffers are on the meta device, made without copying their values
    (a deep copy first duplicated every weight: 99 MiB for a SepFormer, GPU memory for a model on CUDA)."""
    memo: dict[int, Any] = {}
    for tensor in (*model.parameters(), *model.buffers()):
        empty = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = nn.Parameter(empty, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else empty
    return copy.deepcopy(model, memo)
