"""Backends: the same plain model run six ways, each a callable ``fn(*inputs) -> first output``.

- ``eager``: the plain model.
- ``prepared``: after :func:`audiosep.optimize.prepare_for_inference` (what ``audiosep infer`` runs).
- ``int8``: :func:`audiosep.quantize.quantize_for_inference` (dynamic int8 linear and pointwise
  layers; CPU, from fp32); its output is checked by SI-SNR against eager, not by abs error.
- ``compile``: ``torch.compile`` of the plain model (shape-specialised: it compiles on the first
  pass at each input shape, which the warm-up absorbs; slow to compile, so only when asked).
- ``torchscript``: ``torch.jit.trace`` then ``torch.jit.freeze``.
- ``onnxruntime``: ``torch.onnx.export`` (the legacy exporter, opset 17, dynamic batch and time
  axes) run by an ONNX Runtime session with the same thread count.

A backend that cannot be built gives a runner whose ``status`` is ``"unsupported: <reason>"``
instead of raising. The exports here are the bench's own small adapters; they could later call
:mod:`audiosep.export`, whose exports check themselves.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from audiosep.errors import one_line

Backend = Literal["eager", "prepared", "int8", "compile", "torchscript", "onnxruntime"]
BACKENDS: tuple[str, ...] = get_args(Backend)
DEFAULT_BACKENDS: tuple[str, ...] = ("eager", "prepared", "torchscript", "onnxruntime")
OPSET = 17


@dataclass
class Runner:
    """One (model, backend, dtype) ready to run, or why it cannot.

    ``artifact`` is the exported file (TorchScript or ONNX) that a memory worker loads.
    """

    model: str
    backend: str
    dtype: str
    fn: Callable[..., Tensor] | None
    status: str = "ok"
    artifact: str | None = None

    def fail(self, err: BaseException | str) -> None:
        self.status = unsupported(err)
        self.fn = None


def unsupported(err: BaseException | str) -> str:
    return f"unsupported: {one_line(err)}"


def first_output(output: Tensor | tuple | list) -> Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "model"


def io_names(num_inputs: int, is_asr: bool) -> tuple[list[str], list[str], dict[str, dict[int, str]]]:
    """ONNX input and output names and their dynamic axes (batch and time everywhere)."""
    if is_asr:
        return (["features", "lengths"], ["log_probs", "out_lengths"], {
            "features": {0: "batch", 2: "frames"}, "lengths": {0: "batch"},
            "log_probs": {0: "batch", 1: "out_frames"}, "out_lengths": {0: "batch"},
        })  # fmt: skip
    return ["mixture"], ["sources"], {"mixture": {0: "batch", 1: "time"}, "sources": {0: "batch", 2: "time"}}


def make_runner(
    backend: str, model: nn.Module, label: str, example: tuple[Tensor, ...], is_asr: bool,
    workdir: Path, threads: int,
) -> Runner:  # fmt: skip
    """A :class:`Runner` for ``model`` (plain, eval, on its device and dtype) through ``backend``."""
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    runner = Runner(label, backend, dtype, None)
    path = workdir / f"{slug(label)}-{dtype}.{'onnx' if backend == 'onnxruntime' else 'pt'}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if backend == "eager":
                runner.fn = _call(model)
            elif backend == "prepared":
                from audiosep.optimize import prepare_for_inference

                runner.fn = _call(prepare_for_inference(model))
            elif backend == "int8":
                runner.fn = _call(int8_model(model))
            elif backend == "compile":
                runner.fn = compile_runner(model)
            elif backend == "torchscript":
                runner.fn, runner.artifact = torchscript_runner(model, example, path)
            elif backend == "onnxruntime":
                _import_onnxruntime()
                export_onnx(model, example, is_asr, path)
                runner.fn, runner.artifact = onnxruntime_runner(path, threads, example[0].device), str(path)
            else:
                raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    except Exception as err:  # noqa: BLE001 (any failure of a backend is a result, not a crash)
        runner.fail(err)
    return runner


def _call(module: Callable[..., object]) -> Callable[..., Tensor]:
    return lambda *inputs: first_output(module(*inputs))


def int8_model(model: nn.Module) -> nn.Module:
    """The int8 inference model of a float32 CPU model (other dtypes and devices are refused)."""
    from audiosep.quantize import quantize_for_inference

    parameter = next(model.parameters())
    if parameter.dtype != torch.float32 or parameter.device.type != "cpu":
        raise ValueError("int8 runs on CPU and quantizes the float32 model (use --dtypes fp32 --device cpu)")
    return quantize_for_inference(model)


def compile_runner(model: nn.Module) -> Callable[..., Tensor]:
    """``torch.compile`` of ``model``, specialised to each input shape.

    Why the larger recompile limit: past it (8 shapes by default) dynamo silently runs eager, and
    a benchmark of many lengths x batch sizes would then time eager under the name ``compile``.
    """
    import torch._dynamo

    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 256))
    return _call(torch.compile(model, dynamic=False))


def torchscript_runner(
    model: nn.Module, example: tuple[Tensor, ...], path: Path
) -> tuple[Callable[..., Tensor], str]:
    """Trace and freeze ``model``, save it to ``path`` (for the memory worker)."""
    with torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False, strict=False)
    try:
        traced = torch.jit.freeze(traced.eval())
    except RuntimeError:
        pass  # freezing is an optimisation: the traced module is still TorchScript
    torch.jit.save(traced, str(path))
    return _call(traced), str(path)


def export_onnx(model: nn.Module, example: tuple[Tensor, ...], is_asr: bool, path: Path) -> None:
    """Export ``model`` with the legacy (TorchScript-based) exporter, dynamic batch and time axes."""
    if example[0].dtype != torch.float32:
        raise TypeError(f"the onnxruntime backend is benchmarked in float32 only, not {example[0].dtype}")
    inputs, outputs, axes = io_names(len(example), is_asr)
    with torch.no_grad():
        torch.onnx.export(model, example, str(path), dynamo=False, opset_version=OPSET, input_names=inputs,
                          output_names=outputs, dynamic_axes=axes)  # fmt: skip


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("onnxruntime is not installed (pip install onnxruntime)") from None
    return onnxruntime


def onnxruntime_runner(
    path: Path | str, threads: int, device: torch.device | str = "cpu"
) -> Callable[..., Tensor]:
    """Run the ONNX file ``path`` with ONNX Runtime; inputs and output are torch tensors."""
    ort = _import_onnxruntime()
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("this onnxruntime has no CUDAExecutionProvider")
        providers = ["CUDAExecutionProvider"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # ORT's threads spin after each run by default, taking the cores from whatever runs next: the model timed
    # after it in an interleaved round ran 1.36x slower (Conv-TasNet at 1 s, 2 cores: 193 ms against 142)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=providers)
    names = [node.name for node in session.get_inputs()]

    def run(*inputs: Tensor) -> Tensor:
        feeds = {name: x.detach().cpu().numpy() for name, x in zip(names, inputs, strict=True)}
        return torch.from_numpy(session.run(None, feeds)[0]).to(inputs[0].device)

    return run
