"""Export a model to ONNX or TorchScript, and prove that the file computes what the model computes.

Why the proof: an exporter records one run on an example input, and any shape arithmetic or
branch it cannot follow freezes into the file (Asteroid's Conv-TasNet ONNX export has been broken
for years; another output all zeros). So the written file is run again at batch 1 and 2 and at
lengths other than the example's (primes: a multiple of no stride; one of them 16 s, the chunk
``audiosep infer`` uses, where errors that grow with the length show), and compared with PyTorch;
above the tolerance nothing is written (or ``<name>.failed`` is kept, when asked). The tolerance is
``atol`` times a scale of at least 1 (:func:`max_errors`): for a separator, the peak of that row's
sources (a sample near zero carries the rounding of the large values summed to make it, so a correct
export of a model with outputs near 1e3 differs by ~1e-4 everywhere); for a recogniser's log-probs,
each value's own magnitude (a label's log-prob of -7e4 must not loosen the check on the best label's).

Exported graphs (``B`` batch, ``T`` samples, ``S`` sources, ``T'`` output frames, ``V`` labels + blank):
separators (pruned too) ``mixture [B, T] -> sources [B, S, T]`` for any ``T >= 1``; QuartzNet with
its log-mel front end, ``waveform [B, T] + lengths [B] -> log_probs [B, T', V], out_lengths [B]``.

ONNX goes through ``torch.onnx.export(dynamo=True)``, the one exporter that handles every model:
the TorchScript-based one cannot translate the front end's complex STFT and writes an invalid
``Transpose`` for ``movedim(-1, 1)`` (every ``channel_ln`` model). It exports a copy whose gLNs
sum their statistics in float64 (:func:`with_float64_gln_statistics`; the PyTorch model stays as
it is): gLN's ``group_norm`` would export as ``InstanceNormalization``, whose float32 sums in ONNX
Runtime drift with the length (2e-3 off PyTorch at 60 s for the trained demo Conv-TasNet). TorchScript goes through
``torch.jit.trace`` (``torch.jit.script`` rejects the models' annotations); a trace records sizes
as graph values, so padding and chunking stay dynamic. The two branches on the input length are
recorded right for every length: :class:`SeparatorGraph` pads inputs shorter than one encoder
window (what the model does in a branch), and exports run with autograd on, so that
``SequenceStack`` records its one-pass path (its slicing, taken without autograd, is equal).
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiosep.errors import UserError
from audiosep.io import atomic_write
from audiosep.models.base import model_window
from audiosep.models.masking import MaskingSeparator
from audiosep.models.quartznet import QuartzNet
from audiosep.models.registry import SEPARATOR_CLASSES
from audiosep.nn.features import LogMelFeatures, front_end_bytes_per_sample
from audiosep.nn.norms import GlobalLayerNorm

ExportFormat = Literal["onnx", "torchscript"]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
DEFAULT_ATOL = 1e-4
DEFAULT_OPSET = 18  # STFT needs >= 17; 18 is the dynamo exporter's native opset
METADATA_KEY = "audiosep"  # ONNX metadata_props key; TorchScript extra file "audiosep.json"
EXAMPLE_SECONDS = 0.4  # the traced example; the checks use other lengths
# 16 s: ``audiosep infer``'s default chunk, the length a file is run at; short ones miss errors
# that grow with the length (float32 statistics summed over the whole input).
CHECK_SECONDS = (0.3, 0.5, 16.0)

Inputs = tuple[Tensor, ...]
Runner = Callable[[Inputs], Inputs]


class ExportCheckError(UserError):
    """The exported file does not reproduce the PyTorch model within ``atol``; holds the report."""

    def __init__(self, message: str, report: ExportReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class CheckCase:
    """One comparison of the exported file with PyTorch."""

    batch: int
    length: int  # samples per row
    max_abs_error: float  # inf: shapes, lengths or finiteness differ, or the file did not run
    failure: str = ""  # why the file did not run, if it did not
    silent_row: bool = False  # the last row is all zeros (digital silence, a padded batch)
    max_scaled_error: float = math.inf  # what atol judges: the error over a scale of at least 1 (:func:`max_errors`)


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_model` wrote and how closely the file reproduces the model."""

    path: Path
    format: str
    opset: int | None  # ONNX only
    file_size: int  # bytes
    atol: float
    cases: tuple[CheckCase, ...]
    seconds: float  # export + check

    @property
    def max_abs_error(self) -> float:
        return max(case.max_abs_error for case in self.cases)

    @property
    def judged_error(self) -> float:
        """The largest error atol judges: absolute for outputs within [-1, 1], scaled beyond (:func:`max_errors`)."""
        return max(case.max_scaled_error for case in self.cases)

    @property
    def passed(self) -> bool:
        return self.judged_error <= self.atol

    def verdict_text(self) -> str:
        """``max abs error 1.2e-05 <= atol 1.0e-04``; the scaled error too where outputs beyond 1 made it differ."""
        scaled = f" (scaled by outputs beyond 1: {self.judged_error:.2e})" if self.judged_error != self.max_abs_error else ""
        return f"max abs error {self.max_abs_error:.2e}{scaled} {'<=' if self.passed else '>'} atol {self.atol:.1e}"

    def lines(self) -> list[str]:
        """Human-readable summary: the file, one line per check case, the verdict."""
        opset = f" (opset {self.opset})" if self.opset is not None else ""
        runtime = "ONNX Runtime" if self.format == "onnx" else "torch.jit.load"
        verdict = "passed" if self.passed else "FAILED"
        return [
            f"{self.path}: {self.format}{opset}, {self.file_size / 1e6:.2f} MB, {self.seconds:.1f} s",
            *(
                f"  batch {c.batch} x {c.length} samples{', last row silent' if c.silent_row else ''}: "
                f"max abs error {c.max_abs_error:.2e}" + (f" ({c.failure})" if c.failure else "")
                for c in self.cases
            ),
            f"check {verdict} ({runtime} vs PyTorch): {self.verdict_text()}",
        ]


def _shortfall(length: Any, minimum: int) -> Any:
    """``max(minimum - length, 0)`` for an int, a traced size (0-dim tensor) or a SymInt."""
    short = minimum - length
    if isinstance(short, Tensor):  # torch.jit.trace records sizes as 0-dim tensors
        return (short + short.abs()) // 2
    return torch.sym_max(short, 0)


class SeparatorGraph(nn.Module):
    """The exported separator: ``mixture [B, T] -> sources [B, S, T]``, correct for every ``T >= 1``.

    Inputs shorter than ``min_length`` (one encoder window of the SepFormer family) are
    zero-padded up to it without a Python branch, and the output is cut back to ``T``: the same
    zeros the model's own ``frame_padding`` adds, but in a form an export records for every length.
    """

    def __init__(self, model: nn.Module, min_length: int = 1) -> None:
        super().__init__()
        self.model = model
        self.min_length = min_length

    def forward(self, mixture: Tensor) -> Tensor:
        if self.min_length <= 1:
            return self.model(mixture)
        length = mixture.shape[-1]
        padded = F.pad(mixture, (0, _shortfall(length, self.min_length)))  # [B, max(T, min_length)]
        return self.model(padded)[..., :length]


class RecognizerGraph(nn.Module):
    """The exported recogniser: log-mel front end + acoustic model in one graph.

    ``waveform [B, T]`` (zero-padded), ``lengths [B]`` (valid samples) ->
    ``(log_probs [B, T', V], out_lengths [B])``.
    """

    def __init__(self, features: LogMelFeatures, model: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.model = model

    def forward(self, waveform: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        feats, frames = self.features(waveform, lengths)  # [B, F, T_frames], [B]
        return self.model(feats, frames)


@dataclass
class _Graph:
    """What gets exported, how its inputs are named and made, and what it is compared with."""

    module: nn.Module
    reference: nn.Module
    input_names: list[str]
    output_names: list[str]
    dynamic_shapes: dict[str, dict[int, str]]
    make_inputs: Callable[[int, int, torch.Generator], Inputs]  # (batch, length, generator)
    task: str  # "separation" or "asr"
    window: int = 1  # a separator's encoder window: inputs below it take the graph's only length branch


def _mixtures(batch: int, length: int, generator: torch.Generator) -> Inputs:
    return (0.1 * torch.randn(batch, length, generator=generator),)


def _utterances(batch: int, length: int, generator: torch.Generator) -> Inputs:
    """Zero-padded waveforms; row ``b > 0`` is shorter, so the padding masks are checked too."""
    lengths = torch.tensor([length - (length * b) // (2 * batch) for b in range(batch)])
    waveform = 0.1 * torch.randn(batch, length, generator=generator)
    waveform = waveform * (torch.arange(length) < lengths.unsqueeze(1))
    return waveform, lengths


def build_graph(model: nn.Module, features: LogMelFeatures | None = None, where: str = "model") -> _Graph:
    """The module to export for ``model`` (a CPU float32 eval copy; ``model`` is left untouched).

    Raises:
        UserError: a model that is neither a separator nor QuartzNet, or QuartzNet without
            its front end.
    """
    if isinstance(model, SEPARATOR_CLASSES):
        model = copy.deepcopy(model).cpu().float().eval()
        min_length = model.encoder.kernel_size[0] if isinstance(model, MaskingSeparator) else 1
        return _Graph(
            SeparatorGraph(model, min_length).eval(), model, ["mixture"], ["sources"],
            {"mixture": {0: "batch", 1: "time"}}, _mixtures, "separation", model_window(model),
        )  # fmt: skip
    if isinstance(model, QuartzNet):
        if features is None:
            raise UserError(f"{where}: QuartzNet exports with its log-mel front end, and none was given")
        graph = RecognizerGraph(copy.deepcopy(features), copy.deepcopy(model)).cpu().float().eval()
        return _Graph(
            graph, graph, ["waveform", "lengths"], ["log_probs", "out_lengths"],
            {"waveform": {0: "batch", 1: "time"}, "lengths": {0: "batch"}}, _utterances, "asr",
        )  # fmt: skip
    known = ", ".join(cls.__name__ for cls in (*SEPARATOR_CLASSES, QuartzNet))
    raise UserError(f"{where}: cannot export a {type(model).__name__}; supported: {known}")


class Float64StatisticsGlobalLayerNorm(GlobalLayerNorm):
    """gLN whose mean and variance are summed in float64 (two passes), for the ONNX graph.

    Why: ``F.group_norm(x, 1)`` exports as ``InstanceNormalization``, and ONNX Runtime sums its
    statistics (as it sums ``ReduceMean``) in float32 with an error that grows with the input:
    1.5e-4 off PyTorch at 16 s, 2e-3 at 60 s for the trained demo Conv-TasNet. Summed in float64, the
    file stays within ~2e-6 of PyTorch up to 60 s (measured); the normalisation itself stays float32.
    The price: 1.4x to 1.6x ONNX Runtime's CPU time for that model (16 s to 60 s).
    """

    statistics_dtype = torch.float64

    def normalize(self, x: Tensor) -> Tensor:
        dims = tuple(range(1, x.dim()))
        wide = x.double()
        mean = wide.mean(dim=dims, keepdim=True)
        var = (wide - mean).square().mean(dim=dims, keepdim=True)
        return (x - mean.to(x.dtype)) * torch.rsqrt(var + self.eps).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self._affine(self.normalize(x))


def _float64_statistics(norm: GlobalLayerNorm) -> Float64StatisticsGlobalLayerNorm:
    """``norm`` (its parameters and mode) computing its statistics in float64."""
    wide = Float64StatisticsGlobalLayerNorm(norm.num_channels, norm.eps).train(norm.training)
    wide.weight, wide.bias = norm.weight, norm.bias
    return wide


def with_float64_gln_statistics(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose gLNs sum their statistics in float64 (``module`` is untouched).

    The ONNX export's substitution (:class:`Float64StatisticsGlobalLayerNorm`): equal to ``module``
    in PyTorch up to float32 rounding, accurate in ONNX Runtime to ~2e-6 up to 60 s (measured). A gLN reached by
    several paths stays one shared module.
    """
    module = copy.deepcopy(module)
    wide: dict[int, Float64StatisticsGlobalLayerNorm] = {}
    for path, child in list(module.named_modules(remove_duplicate=False)):
        if type(child) is GlobalLayerNorm:
            if id(child) not in wide:
                wide[id(child)] = _float64_statistics(child)
            parent, _, name = path.rpartition(".")
            setattr(module.get_submodule(parent), name, wide[id(child)])
    return module


@contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Silence the exporters' notes about themselves (deprecations, TracerWarnings on the models'
    input validation, torchvision ops they skip): the check after the export is the judge."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=r".*torch\.jit", category=FutureWarning)
            warnings.filterwarnings("ignore", module=r"torch\.onnx")
            yield
    finally:
        logger.setLevel(level)


def _write(graph: _Graph, example: Inputs, tmp: str, format: str, opset: int, metadata: str) -> None:
    """Export ``graph`` to ``tmp`` (ONNX: with float64 gLN statistics); autograd on, so that
    ``SequenceStack`` records its one-pass path."""
    with _quiet_exporters(), torch.enable_grad():
        if format == "torchscript":
            traced = torch.jit.trace(graph.module, example, check_trace=False)
            buffer = io.BytesIO()  # jit.save to a path aborted the process on a full disk (a C++ destructor threw)
            torch.jit.save(traced, buffer, _extra_files={f"{METADATA_KEY}.json": metadata})
            Path(tmp).write_bytes(buffer.getbuffer())
            return
        program = torch.onnx.export(
            with_float64_gln_statistics(graph.module), example, None, dynamo=True,
            optimize=False,  # onnxscript's optimizer drops `+ eps` for eps <= 1e-8 (gLN, cLN): NaN on silence
            opset_version=opset, verbose=False,
            input_names=graph.input_names, output_names=graph.output_names,
            dynamic_shapes=graph.dynamic_shapes,
        )  # fmt: skip
        program.model.metadata_props[METADATA_KEY] = metadata
        program.save(tmp, external_data=False)


def load_runner(path: str | os.PathLike, format: str, input_names: Sequence[str]) -> Runner:
    """A function running the exported file: ONNX Runtime (CPU) or ``torch.jit.load``."""
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run_onnx(inputs: Inputs) -> Inputs:
            feed = {name: x.numpy() for name, x in zip(input_names, inputs, strict=True)}
            return tuple(torch.from_numpy(y) for y in session.run(None, feed))

        return run_onnx
    with _quiet_exporters():
        module = torch.jit.load(str(path), map_location="cpu")

    def run_torchscript(inputs: Inputs) -> Inputs:
        with torch.inference_mode():
            out = module(*inputs)
        return out if isinstance(out, tuple) else (out,)

    return run_torchscript


def max_errors(got: Sequence[Tensor], want: Sequence[Tensor], per_value: bool = False) -> tuple[float, float]:
    """Largest ``|got - want|``, and largest ``|got - want| / scale`` over all outputs.

    ``scale`` is at least 1: the peak ``|want|`` of each batch row (waveforms: a sample near zero
    carries the float32 rounding of the large values summed to make it), or with ``per_value`` each
    value's own ``|want|`` (log-probs: one label's -7e4 must not loosen the check on the best
    label's). Both ``inf`` for a shape, dtype kind or finiteness mismatch.
    """
    if len(got) != len(want):
        return math.inf, math.inf
    worst = scaled = 0.0
    for g, w in zip(got, want, strict=True):
        if tuple(g.shape) != tuple(w.shape):
            return math.inf, math.inf
        if not w.is_floating_point():
            error = 0.0 if not g.is_floating_point() and torch.equal(g.to(w.dtype), w) else math.inf
            worst, scaled = max(worst, error), max(scaled, error)
            continue
        diff = (g.double() - w.double()).abs()
        if diff.numel() and not torch.isfinite(diff).all():
            return math.inf, math.inf
        if not diff.numel():
            continue
        magnitude = w.double().abs()
        if not per_value and w.dim() > 1:
            magnitude = magnitude.flatten(1).amax(dim=1).view(-1, *([1] * (w.dim() - 1)))
        worst = max(worst, float(diff.max()))
        scaled = max(scaled, float((diff / magnitude.clamp_min(1.0)).max()))
    return worst, scaled


def _next_prime(n: int) -> int:
    n = max(n, 2)
    while any(n % d == 0 for d in range(2, math.isqrt(n) + 1)):
        n += 1
    return n


def default_check_lengths(sample_rate: int, window: int = 1) -> tuple[int, ...]:
    """Prime lengths (a multiple of no stride) near 0.3 s, 0.5 s and 16 s (run at batch 1, 2, 1, ...), then for
    a separator of encoder ``window`` > 1 the short ones where its padding branch works: 1 sample, one below
    the window, and a prime above it."""
    lengths = [_next_prime(round(seconds * sample_rate)) for seconds in CHECK_SECONDS]
    if window > 1:
        lengths += [n for n in dict.fromkeys((1, window - 1, _next_prime(window + 1))) if n not in lengths]
    return tuple(lengths)


def _first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:300]}"


def _run_checks(
    graph: _Graph, path: str | os.PathLike, format: str, lengths: Sequence[int]
) -> tuple[CheckCase, ...]:
    """Batch 1 at the first length, batch 2 at the second (alternating); a file that fails to run fails.

    Separators get one more case, batch 2 at the first length with a silent second row: a norm's zero
    variance, where an exporter that drops an ``eps`` gives NaN. Not recognisers: the per-feature
    normalisation of a silent row divides float rounding residue by 1e-5, which runtimes sum differently.
    """
    try:
        runner: Runner | None = load_runner(path, format, graph.input_names)
        failure = ""
    except Exception as err:  # ONNX Runtime and torch.jit raise many types for a bad file
        runner, failure = None, f"cannot load the file: {_first_line(err)}"
    generator = torch.Generator().manual_seed(0)
    cases = []
    silent_check = [lengths[0]] if graph.task == "separation" else []
    for index, length in enumerate([*lengths, *silent_check]):
        silent = index == len(lengths)
        batch = 2 if silent else 1 + index % 2
        inputs = graph.make_inputs(batch, length, generator)
        if silent:
            inputs = (inputs[0] * torch.tensor([[1.0], [0.0]]), *inputs[1:])
        try:
            with torch.inference_mode():
                want = graph.reference(*inputs)
        except RuntimeError as err:  # e.g. a length below the STFT's reflect padding
            raise UserError(f"--check-lengths {length}: the PyTorch model itself cannot take it ({_first_line(err)})") from err
        want = want if isinstance(want, tuple) else (want,)
        try:
            errors = max_errors(runner(inputs), want, graph.task == "asr") if runner else (math.inf, math.inf)
            cases.append(CheckCase(batch, length, errors[0], failure, silent, errors[1]))
        except Exception as err:  # e.g. a shape the graph cannot take
            cases.append(CheckCase(batch, length, math.inf, _first_line(err), silent, math.inf))
    return tuple(cases)


def check_format(path: Path, format: str) -> None:
    """Raise :class:`UserError` for an unknown format, or ONNX without its packages."""
    if format not in EXPORT_FORMATS:
        raise UserError(f"{path}: unknown export format {format!r}; valid: {', '.join(EXPORT_FORMATS)}")
    if format != "onnx":
        return
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:  # onnxscript: the dynamo exporter; onnxruntime: the check
        raise UserError(f"{path}: ONNX export needs {', '.join(missing)}: pip install 'audiosep[export]'")
    try:  # installed but broken (a missing shared library, a version clash): else every check fails as "inf"
        importlib.import_module("onnxruntime")
    except Exception as err:  # noqa: BLE001 - an import can raise anything
        raise UserError(f"{path}: onnxruntime is installed but cannot be imported ({_first_line(err)})") from None


def check_opset(path: Path, format: str, opset: int) -> None:
    """Refuse, before any export, an ONNX opset the exporter cannot write: below its own (it cannot convert
    down: 17 always failed) or above the newest this onnx package knows (99 failed after a whole export).
    Call after :func:`check_format` (which makes sure onnx is there)."""
    if format != "onnx":
        return
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not DEFAULT_OPSET <= opset <= newest:
        raise UserError(f"{path}: the ONNX opset must be {DEFAULT_OPSET}..{newest} (the exporter's own up to the "
                        f"newest this onnx knows), got {opset}")  # fmt: skip


MAX_CHECK_SECONDS = 600  # a check length of 1e11 samples asked for 400 GB: a traceback (reviewer)


def _check_lengths(path: Path, lengths: Sequence[int], atol: float, sample_rate: int) -> None:
    if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
        raise UserError(f"{path}: check lengths must be positive sample counts, got {list(lengths)}")
    if max(lengths) > MAX_CHECK_SECONDS * sample_rate:
        raise UserError(f"{path}: check lengths of at most {MAX_CHECK_SECONDS} s ({MAX_CHECK_SECONDS * sample_rate} "
                        f"samples at {sample_rate} Hz), got {max(lengths)}")  # fmt: skip
    if not 0 <= atol < math.inf:  # an infinite atol passed a file that could not even be loaded
        raise UserError(f"{path}: atol must be a finite number >= 0, got {atol}")


def check_export(
    path: str | os.PathLike,
    model: nn.Module,
    format: ExportFormat,
    sample_rate: int,
    *,
    features: LogMelFeatures | None = None,
    lengths: Sequence[int] | None = None,
    atol: float = DEFAULT_ATOL,
) -> ExportReport:
    """Run an exported file and compare it with ``model`` (batch 1 and 2, ``lengths`` samples).

    Returns the report (see :attr:`ExportReport.passed`); raises nothing for a mismatch.

    Raises:
        UserError: unknown format, missing file, unsupported model, bad lengths.
    """
    path = Path(path)
    check_format(path, format)
    graph = build_graph(model, features, str(path))
    lengths = list(lengths or default_check_lengths(sample_rate, graph.window))
    _check_lengths(path, lengths, atol, sample_rate)
    if not path.is_file():
        raise UserError(f"{path}: exported file not found")
    start = time.perf_counter()
    cases = _run_checks(graph, path, format, lengths)
    opset = _onnx_opset(path) if format == "onnx" else None
    return ExportReport(path, format, opset, path.stat().st_size, atol, cases, time.perf_counter() - start)


def _check_pass_memory(path: Path, model: nn.Module, features: LogMelFeatures | None, samples: int) -> None:
    """Refuse, in one line, a model whose largest check (batch 2 of ``samples``) would not fit in memory, estimated
    before anything runs (:func:`~audiosep.bench.memory.pass_memory_problem`); the front end's STFT has no meta
    kernel, so a recogniser's is counted from its sizes."""
    from audiosep.bench.memory import MIB, pass_memory_problem

    if features is None:
        problem = pass_memory_problem(model, (torch.zeros(2, samples, device="meta"),), torch.device("cpu"))
    else:
        frames = features.frame_lengths(torch.tensor([samples, samples]))
        inputs = (torch.zeros(2, features.n_mels, int(frames[0]), device="meta"), frames.to("meta"))
        front_end = 2 * samples * front_end_bytes_per_sample(features) / MIB
        problem = pass_memory_problem(model, inputs, torch.device("cpu"), front_end)
    if problem is not None:
        raise UserError(f"{path}: checking the export over {samples} samples: {problem} (the model file describes a model "
                        "too large for this machine, or pass shorter --check-lengths)")  # fmt: skip


def _onnx_opset(path: str | os.PathLike) -> int | None:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next((op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")), None)


def _example(graph: _Graph, sample_rate: int, lengths: Sequence[int]) -> Inputs:
    """Batch 2 (torch.export specialises sizes 0 and 1) at a length no check uses."""
    length = max(round(EXAMPLE_SECONDS * sample_rate), 64)
    while length in lengths:
        length += 1
    return graph.make_inputs(2, length, torch.Generator().manual_seed(1))


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    format: ExportFormat,
    sample_rate: int,
    *,
    features: LogMelFeatures | None = None,
    atol: float = DEFAULT_ATOL,
    opset: int = DEFAULT_OPSET,
    check_lengths: Sequence[int] | None = None,
    metadata: Mapping[str, Any] | None = None,
    keep_failed: bool = False,
) -> ExportReport:
    """Export ``model`` to ``path`` and check the written file against it (see the module docstring).

    Args:
        model: a separator, or a QuartzNet (then ``features`` is required).
        path: the file to write (atomically: it appears only once the check passed).
        format: ``"onnx"`` or ``"torchscript"``.
        sample_rate: the model's rate; stored in the file and used for the default check lengths.
        features: QuartzNet's front end, exported with it.
        atol: largest allowed difference from PyTorch: absolute for outputs within [-1, 1], scaled
            beyond that (:func:`max_errors`).
        opset: ONNX opset (>= 18: the exporter writes 18 and cannot convert down to 17).
        check_lengths: samples per row of the checks (default: :func:`default_check_lengths`).
        metadata: extra JSON-able entries stored with ``sample_rate`` (ONNX ``metadata_props``
            key ``"audiosep"``; TorchScript extra file ``audiosep.json``).
        keep_failed: keep a file that fails the check as ``<path>.failed`` (for debugging).

    Returns:
        The report of the check that passed.

    Raises:
        UserError: unknown format, unsupported model, missing ONNX packages, or the exporter
            failed (one line: "unsupported: why").
        ExportCheckError: the written file differs from the model by more than the tolerance.

    Example:
        >>> export_model(conv_tasnet_demo(), "demo.onnx", "onnx", 8000).max_abs_error  # doctest: +SKIP
        3.1e-07
    """
    path = Path(path)
    check_format(path, format)
    check_opset(path, format, opset)
    graph = build_graph(model, features, str(path))
    lengths = list(check_lengths or default_check_lengths(sample_rate, graph.window))
    _check_lengths(path, lengths, atol, sample_rate)
    _check_pass_memory(path, model, features, max(lengths))
    info = {"sample_rate": sample_rate, "model": type(model).__name__, "task": graph.task,
            "inputs": graph.input_names, "outputs": graph.output_names, **(metadata or {})}  # fmt: skip
    example = _example(graph, sample_rate, lengths)
    start = time.perf_counter()
    reports: list[ExportReport] = []

    def write(tmp: str) -> None:
        try:
            _write(graph, example, tmp, format, opset, json.dumps(info))
        except OSError:
            raise  # the disk's refusal (full, read-only): atomic_write names the file
        except Exception as err:  # the exporters raise many types, with pages of detail
            name = type(model).__name__
            raise UserError(
                f"{path}: unsupported: cannot export {name} to {format} ({_first_line(err)})"
            ) from err
        opset_used = _onnx_opset(tmp) if format == "onnx" else None
        if format == "onnx" and opset_used != opset:  # onnxscript falls back to its own opset when down-conversion fails
            raise UserError(f"{path}: the exporter wrote opset {opset_used}, not the {opset} asked for (its conversion "
                            f"to {opset} failed); not written")  # fmt: skip
        cases = _run_checks(graph, tmp, format, lengths)
        seconds = time.perf_counter() - start
        reports.append(ExportReport(path, format, opset_used, os.path.getsize(tmp), atol, cases, seconds))
        if not reports[0].passed:
            _refuse(reports[0], tmp, keep_failed)

    atomic_write(path, write)
    return reports[0]


def _refuse(report: ExportReport, tmp: str, keep_failed: bool) -> None:
    """Raise :class:`ExportCheckError`; the temp file goes (atomic_write) or becomes ``<path>.failed``."""
    kept = report.path.with_name(report.path.name + ".failed")
    fate = "not written"
    if keep_failed and (kept.is_symlink() or (kept.exists() and not kept.is_file())):
        fate = f"not kept: {kept} exists and is not a file"
    elif keep_failed:
        fate = f"kept as {kept}" + (" (replacing the file of that name)" if kept.exists() else "")
        os.replace(tmp, kept)
    raise ExportCheckError(
        f"{report.path}: the exported file differs from the PyTorch model: {report.verdict_text()}; {fate}", report
    )
