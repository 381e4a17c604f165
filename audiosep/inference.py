"""Separation of real audio of any length: files in, files out, bounded memory, no silent damage.

Long inputs are cut into overlapping chunks; each chunk's sources are reordered to match the
previous chunk on their overlap (the model's output order is arbitrary) and scaled by the
least-squares gain there, then cross-faded. Only the overlap still to be blended is kept between
chunks. Files are checked whole in blocks, then read, resampled, separated and written span by span
(:mod:`audiosep.audio_blocks`), so memory follows the chunk size, not the file's length. Channel
mixdown and resampling are explicit and logged.

A missing, empty, corrupt, truncated or unknown-format file, non-finite samples, an out-of-range
channel, an input shorter than the model's window and non-finite model output raise
:class:`SeparationError` naming the file and the reason. Outputs are written atomically (all
sources of a file appear together, or none).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import torch
from torch import Tensor, nn

from audiosep.audio_blocks import (
    MAX_SAMPLE,
    AudioError,
    CheckedAudio,
    cancelling_channels_warning,
    check_sample_rate,
    check_sample_values,
    kind_of,
    mono_waveform,
    resample_span,
    resampled,
    resampled_length,
)
from audiosep.checkpoint import CheckpointError, load_model
from audiosep.data.audio import to_mono
from audiosep.io import (
    TEMP_SUFFIX,
    atomic_paths,
    check_output_subtype,
    output_subtype,
    soundfile_name,
    temp_prefix,
)
from audiosep.losses import best_permutation
from audiosep.models.base import eval_copy, model_window, weights_sha256
from audiosep.models.registry import SEPARATOR_CLASSES
from audiosep.models.resepformer import RESepFormer
from audiosep.optimize import prepare_for_inference
from audiosep.transcriber import Transcriber

__all__ = [
    "ChunkConfig",
    "SeparationError",
    "Separator",
    "Transcriber",
    "limit_peak",
    "output_paths",
    "read_mixture",
    "write_sources_atomic",
]

log = logging.getLogger(__name__)
SEPARATE_ONE_CHANNEL = "the outputs will be near silent: separate one channel (--channel N, or waveform[N])"
InferenceDtype = Literal["fp32", "int8"]

OUTPUT_BLOCK = 1 << 16  # samples per block when reading, resampling and writing long audio
MIN_CHUNK_SECONDS = 1.0  # --max-memory never picks a shorter chunk
# One meta-device pass over this much audio, scaled to a chunk's length, estimates a pass's memory before any runs.
MEMORY_PROBE_SECONDS = 1.0
MAX_CHUNK_SECONDS = 600.0  # nor a longer one (the overlap-add keeps nothing longer)
PEAK_LIMIT = 0.999  # sources are scaled as one so that no sample of an integer-PCM output exceeds this
WAV_SAMPLE_BYTES = {"PCM_16": 2, "PCM_24": 3, "FLOAT": 4}  # per sample of each output subtype
WAV_MAX_DATA_BYTES = 2**32 - 1 - 4096  # a WAV's sizes are 32-bit; room left for its header and comment


class SeparationError(AudioError):
    """This input cannot be separated: ``reason`` says why, ``path`` names the file when known.

    A :class:`~audiosep.errors.UserError` (the CLI prints one line) and a ``ValueError``.
    """


def read_mixture(path: str | os.PathLike, channel: int | None = None) -> tuple[Tensor, int]:
    """Read a whole audio file with the checks of :class:`~audiosep.audio_blocks.CheckedAudio`.

    Returns ``(float32 Tensor[C, T], sample_rate)``; ``channel`` (0-based) keeps one channel
    (``[1, T]``), ``None`` keeps them all (callers mix down).

    Raises:
        SeparationError: missing, empty, unknown-format, corrupt or truncated file, ``channel`` out
            of range, or non-finite samples.
    """
    try:
        with CheckedAudio(path, channel) as audio:
            return audio.read(0, audio.frames), audio.sample_rate
    except AudioError as err:
        raise SeparationError(err.reason, err.path) from err


# ----------------------------------------------------------------------------------------------
# Chunking


@dataclass(frozen=True)
class ChunkConfig:
    """Chunked inference: ``seconds`` per chunk, ``overlap_seconds`` shared by neighbours."""

    seconds: float = 16.0
    overlap_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.seconds) and math.isfinite(self.overlap_seconds)):
            raise ValueError(f"chunk {self.seconds} s and overlap {self.overlap_seconds} s must be finite")
        if self.seconds > MAX_CHUNK_SECONDS:
            raise ValueError(f"chunk {self.seconds:g} s is longer than {MAX_CHUNK_SECONDS:g} s")
        if not 0 < self.overlap_seconds < self.seconds / 2:
            raise ValueError(
                f"overlap {self.overlap_seconds} s must be in (0, chunk/2) for a {self.seconds} s chunk"
            )

    def samples(self, sample_rate: int) -> tuple[int, int]:
        """``(chunk, overlap)`` in samples."""
        return int(self.seconds * sample_rate), int(self.overlap_seconds * sample_rate)


def chunk_layout(length: int, chunk: int, overlap: int, grid: int = 1) -> tuple[list[int], int]:
    """``(starts, size)``: the fewest chunks of one ``size`` covering ``length``, neighbours sharing at least
    ``overlap`` samples, every start a multiple of ``grid`` (at most ``chunk - overlap``); the last chunk
    may reach up to ``grid - 1`` samples past ``length`` (it is read up to the end only: shorter).

    The chunks are spread evenly (not ``chunk`` long with a last one pushed back over its neighbour), so
    a 60 s file in 16 s chunks with 2 s overlap costs 5 chunks of 13.6 s, not 5 of 16 s. Why the grid
    (the model's encoder stride): a chunk that starts between two of the whole signal's frames is framed
    differently, and a Conv-TasNet's output differed over its whole length (11-19 dB from the unchunked
    output, 34-35 dB on the grid); the hop is the shortest multiple of it that covers the signal in that
    many chunks, so the chunks may overlap a little more than ``overlap``.
    """
    if length <= chunk:
        return [0], length
    longest_hop = (chunk - overlap) // grid * grid  # callers keep grid <= chunk - overlap
    count = -(-(length - chunk) // longest_hop) + 1  # the fewest chunks
    hop = min(longest_hop, -(-(length - overlap) // (count * grid)) * grid)  # then the shortest that covers,
    size = max(hop + overlap, length - (count - 1) * hop)  # with the room left below ``chunk`` where it falls short
    last = -(-(length - size) // grid) * grid  # on the grid, at most the hop after its neighbour
    return [index * hop for index in range(count - 1)] + [last], size


def fade(overlap: int) -> Tensor:
    """Weights of a chunk's head over an ``overlap`` it shares with the chunk before (its tail's are 1 minus these).

    0 over the first quarter, a linear ramp over the middle half, 1 over the last quarter: each chunk's
    edge, where the model saw zeros instead of the signal around it, is not used where its neighbour has
    the signal (with a ramp over the whole overlap, a 65-tap filter's output was 2e-4 off at every seam).
    """
    quarter = overlap // 4
    ramp = torch.arange(1, overlap - 2 * quarter + 1) / (overlap - 2 * quarter + 1)
    return torch.cat([torch.zeros(quarter), ramp, torch.ones(quarter)])


def crossfade_window(length: int, fade_in: int, fade_out: int) -> Tensor:
    """Weights 1 inside, :func:`fade` over the first ``fade_in`` samples and its mirror over the last ``fade_out``."""
    window = torch.ones(length)
    if fade_in:
        window[:fade_in] = fade(fade_in)
    if fade_out:
        window[length - fade_out :] = 1 - fade(fade_out)
    return window


def align_to_previous(current: Tensor, previous: Tensor) -> Tensor:
    """Match ``current[S, T]`` to the output so far: ``previous[S, n]`` over their ``n`` shared samples.

    Over the overlaps' middle halves (their ends are the chunks' edges, where each chunk saw zeros),
    sources are reordered and negated where that brings them closest to the output so far (the least
    total squared error: the largest sum of absolute inner products; a model may swap sources or flip
    a sign from one chunk to the next). The level stays the model's own: a least-squares gain fitted on
    each overlap and chained from chunk to chunk made levels drift (-4.6 dB for one source over 30
    minutes, -12 dB in 20 s of 1 s chunks).
    """
    shared = previous.shape[-1]
    middle = slice(shared // 4, shared - shared // 4) if shared >= 4 else slice(0, shared)
    products = current[:, :shared][:, middle].double() @ previous[:, middle].double().T  # S_cur, S_prev
    perm = best_permutation(products.abs().unsqueeze(0))[0]
    signs = torch.where(products[perm, torch.arange(len(perm))] < 0, -1.0, 1.0)
    return current[perm] * signs.unsqueeze(-1).to(current.dtype)


def model_grids(model: nn.Module) -> list[int]:
    """Sample grids on which a chunk is framed as the whole signal is, coarsest first: RE-SepFormer's blocks
    of ``chunk_size`` frames, then the encoder stride, then 1 (a model without a framing encoder)."""
    encoder = getattr(model, "encoder", None)
    stride = int(encoder.stride[0]) if isinstance(encoder, nn.Conv1d) else getattr(model, "stride", 1)
    stride = stride if isinstance(stride, int) else 1
    grids = [stride, 1]
    if isinstance(model, RESepFormer):  # non-overlapping chunks of frames from the signal's start
        grids.insert(0, stride * int(model.masker.chunk_size))
    return grids


def source_tag(path: str | os.PathLike, settings: str = "") -> str:
    """What the outputs of ``path`` carry in their WAV comment: the input's absolute path, size and mtime,
    then the digest of what made them (:meth:`Separator.output_settings`) when given.

    Why: an existing output is only known to be this input's result (to skip it on a rerun, or to
    tell it from a user's file that merely has an output's name, or from a result of another model
    or other options) if it says so.
    """
    stat = os.stat(path)
    tag = f"{source_prefix(path)}{stat.st_size} bytes, mtime_ns {stat.st_mtime_ns})"
    return f"{tag}{SETTINGS_MARK}{settings}" if settings else tag


SETTINGS_MARK = " with settings "  # between source_tag's input part and its settings digest


COMMENT_PATH_BYTES = 1500  # libsndfile drops a WAV comment over ~2045 bytes without an error


def source_prefix(path: str | os.PathLike) -> str:
    """The start of :func:`source_tag` that names the input's path only (its size and mtime follow).

    A path too long for the comment (in UTF-8 bytes), or not UTF-8 at all (a Latin-1 name on Linux),
    is named by its SHA-256 instead: the comment would be dropped or could not be written, and the
    outputs of a rerun taken for another file's.
    """
    absolute = os.path.abspath(path)
    try:
        size = len(absolute.encode("utf-8"))
    except UnicodeEncodeError:
        size = COMMENT_PATH_BYTES + 1
    if size > COMMENT_PATH_BYTES:
        absolute = "sha256:" + hashlib.sha256(os.fsencode(absolute)).hexdigest()
    return f"audiosep: separated from {absolute} ("


TAG_PATTERN = re.compile(
    r"audiosep: separated from (?P<path>.*) \((?P<size>\d+) bytes, mtime_ns (?P<mtime>\d+)\)"
    r"(?: with settings (?P<settings>.*))?", re.DOTALL
)


@dataclass(frozen=True)
class SourceTag:
    """A :func:`source_tag` taken apart: the input's path (or ``sha256:...``), size, mtime and settings."""

    path: str
    size: int
    mtime_ns: int
    settings: str | None

    @classmethod
    def parse(cls, tag: str) -> SourceTag | None:
        match = TAG_PATTERN.fullmatch(tag)
        if match is None:
            return None
        return cls(match["path"], int(match["size"]), int(match["mtime"]), match["settings"])

    def same_file(self, other: SourceTag) -> bool:
        """The same input as it is now: the same size and mtime, and the same path or, reached through a
        symbolic link since, a path to the same file (two recordings of one size and mtime, unpacked from
        one archive, are not the same input)."""
        if (self.size, self.mtime_ns) != (other.size, other.mtime_ns):
            return False
        if self.path == other.path:
            return True
        try:
            return os.path.samefile(self.path, other.path)
        except OSError:  # a path that is gone (a renamed folder) or a digest
            return False

    def moved_from(self, other: SourceTag) -> bool:
        """Whether this tag may name ``other``'s file before its folder was renamed: the same file name,
        size and mtime. Evidence enough only for a file that also sits where ``other``'s output goes."""
        hashed = self.path.startswith("sha256:") or other.path.startswith("sha256:")
        same_name = not hashed and os.path.basename(self.path) == os.path.basename(other.path)
        return same_name and (self.size, self.mtime_ns) == (other.size, other.mtime_ns)


def written_from(output: str | os.PathLike) -> str | None:
    """The :func:`source_tag` an existing output carries; None for any other file."""
    try:
        with sf.SoundFile(soundfile_name(output)) as handle:
            comment = handle.comment
    except (sf.LibsndfileError, OSError, RuntimeError, TypeError):
        return None
    return comment if comment.startswith("audiosep: separated from ") else None


def output_paths(out_dir: str | os.PathLike, name: str | os.PathLike, num_sources: int) -> list[Path]:
    """``out_dir/<name>_s1.wav ... _s<num_sources>.wav``; ``name`` may hold folders (``a/x``)."""
    base = Path(out_dir) / Path(name)
    return [base.parent / f"{base.name}_s{k + 1}.wav" for k in range(num_sources)]


class Separator:
    """Separate mixtures with a trained model.

    ``separator.model`` is the plain model (hooks, export, pruning): the caller's own when it is in
    eval mode on ``device`` already, else an eval-mode copy there; ``separator.runtime`` is what
    runs: ``prepare_for_inference(model)`` when ``optimize`` (the default), else the plain model;
    with ``dtype="int8"``, :func:`audiosep.quantize.quantize_for_inference` (CPU). Edits to
    ``separator.model``'s weights (pruned, retrained, loaded) and layers (one swapped for another) are seen at
    the next separation: the runtime is rebuilt from them; hooks on it need ``optimize=False`` (the runtime's fused layers
    cannot run them: an error, not a hook silently skipped). With
    ``stream_block_ms``, a causal Conv-TasNet or RE-SepFormer separates through its stateful stream in blocks of
    that length (:mod:`audiosep.streaming`; the same output as offline, no chunking). ``chunk_batch``
    chunks of a long input go through the model in one batch (faster on a GPU; same output).

    Example:
        >>> sep = Separator.from_checkpoint("demo_out/model.ckpt")  # doctest: +SKIP
        >>> sources = sep.separate(waveform, 16000)  # [num_sources, T] at 16 kHz  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        sample_rate: int,
        chunk: ChunkConfig | None = None,
        device: str | torch.device = "cpu",
        optimize: bool = True,
        dtype: InferenceDtype = "fp32",
        stream_block_ms: float | None = None,
        chunk_batch: int = 1,
    ) -> None:
        if chunk_batch < 1:
            raise ValueError(f"chunk_batch must be at least 1, got {chunk_batch}")
        self.chunk_batch = chunk_batch
        self.device = torch.device(device)
        self.model = eval_copy(model, self.device)  # the caller's model is never moved or switched to eval
        self.dtype = dtype
        self.stream_block_ms = stream_block_ms
        self.progress = False  # a chunks bar for long inputs (on a terminal only); audiosep infer sets it
        if stream_block_ms is not None:
            self.stream()  # refuses a model that cannot stream (or int8), before any file is read
            from audiosep.streaming import MAX_BLOCK_MS

            if not 0 < stream_block_ms <= MAX_BLOCK_MS:  # 1e308 overflowed per file; 1e9 read whole files at once
                raise ValueError(f"a stream's block must be a positive number of ms, at most {MAX_BLOCK_MS:g}, "
                                 f"got {stream_block_ms:g}")  # fmt: skip
            if self.device.type != "cpu":
                raise ValueError(f"streaming runs on CPU, not {self.device}")
        if dtype not in ("fp32", "int8"):
            raise ValueError(f"unknown inference dtype {dtype!r}; valid: fp32, int8")
        if dtype == "int8" and (self.device.type != "cpu" or not optimize):
            raise ValueError("int8 inference runs on CPU with the inference transform (no --no-optimize)")
        self.optimized = optimize
        self.runtime = self._build_runtime()
        self._built_from = self._model_probe()
        self.sample_rate = sample_rate
        self.chunk = chunk or ChunkConfig()
        self.window = model_window(self.model)
        chunk_samples, overlap_samples = self.chunk.samples(sample_rate)
        if chunk_samples < max(self.window, 2) or overlap_samples < 1:
            raise ValueError(
                f"chunk {self.chunk.seconds} s / overlap {self.chunk.overlap_seconds} s are too short for "
                f"the model ({self.window} samples at {sample_rate} Hz)"
            )
        self._num_sources: int | None = None
        self._memory_checked: tuple[ChunkConfig, int] | None = None  # the chunk and batch found to fit

    def _build_runtime(self) -> nn.Module:
        """What runs: the int8 or prepared transform of :attr:`model`, or the model itself."""
        if self.dtype == "int8":
            from audiosep.quantize import quantize_for_inference

            return quantize_for_inference(self.model)
        return prepare_for_inference(self.model) if self.optimized else self.model

    def _model_probe(self) -> tuple[tuple[object, ...], ...]:
        """Per layer of :attr:`model` its name, class and settings; per weight its name, shape, storage, version,
        sum and norm.

        Why sum and norm too: tensor version counters miss edits made through ``.data`` (a zeroed or
        pruned weight, another checkpoint's values still change both); two passes, no copy of the weights.
        Why the layers: a layer without weights swapped in (``model.encoder_act = nn.Identity()``) left the
        runtime built before it (reviewer).
        """
        probe: list[tuple[object, ...]] = [
            (name, type(module), module.extra_repr(), module.training) for name, module in self.model.named_modules()
        ]
        with torch.no_grad():
            for name, tensor in self.model.state_dict(keep_vars=True).items():
                values = tensor.detach()
                if not (values.is_floating_point() or values.is_complex()):  # counters, masks
                    values = values.double()
                # repr: NaN equals itself there (a NaN weight rebuilt the runtime at every call)
                summary = repr((values.sum().item(), torch.linalg.vector_norm(values).item()))
                probe.append((name, tuple(values.shape), tensor.data_ptr(), tensor._version, summary))
        return tuple(probe)

    def _sync_runtime(self) -> None:
        """Rebuild :attr:`runtime` (and forget the weights digest) when :attr:`model` changed since it was built.

        Raises:
            ValueError: the model has hooks and the runtime is a transformed copy that cannot run them.
        """
        if self.runtime is not self.model:
            from audiosep.optimize import refuse_hooks

            refuse_hooks(self.model)
        probe = self._model_probe()
        if probe != self._built_from:
            self.runtime = self._build_runtime()
            self._built_from = probe
            for derived in ("_weights_sha256", "_probe_pass"):  # of the model as it was
                self.__dict__.pop(derived, None)
            self._num_sources = None
            self._memory_checked = None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **kwargs) -> Separator:
        """Rebuild from an audiosep model file or Lightning ``.ckpt`` (no recipe needed).

        ``kwargs`` go to the constructor (``chunk``, ``device``, ``optimize``).
        """
        model, metadata = load_model(path)
        if not isinstance(model, SEPARATOR_CLASSES):
            raise CheckpointError(f"{path}: holds a {type(model).__name__}, not a separator")
        sample_rate = metadata.get("sample_rate")
        if not sample_rate:
            raise ValueError(f"{path}: the checkpoint does not record the model's sample rate")
        return cls(model, int(sample_rate), **kwargs)

    @property
    def num_sources(self) -> int:
        """How many sources the model outputs (asked of the model, or found by one tiny call)."""
        if self._num_sources is None:
            declared = getattr(self.model, "num_sources", None)
            if isinstance(declared, int) and declared > 0:
                self._num_sources = declared
            else:
                with torch.inference_mode():
                    probe = torch.zeros(1, max(self.window, 2 * self.window), device=self.device)
                    self._num_sources = int(self.runtime(probe).shape[1])
        return self._num_sources

    def check_length(self, num_samples: int, sample_rate: int) -> None:
        """Raise :class:`SeparationError` when ``sample_rate`` is not a positive integer or ``num_samples``
        at that rate is under the window."""
        sample_rate = check_sample_rate(sample_rate, SeparationError)
        at_model_rate = math.ceil(num_samples * self.sample_rate / sample_rate)
        if at_model_rate < self.window:
            raise SeparationError(
                f"too short: {num_samples} samples at {sample_rate} Hz ({1000 * num_samples / sample_rate:.1f} ms); "
                f"the model needs at least {self.window} samples at {self.sample_rate} Hz "
                f"({1000 * self.window / self.sample_rate:.1f} ms)"
            )

    def _pass_peak_mib(self, seconds: float) -> float:
        """Extra memory (MiB) at the peak of one forward pass over ``chunk_batch`` chunks of ``seconds``."""
        from audiosep.bench.memory import cuda_peak, peak_rss_mib, start_peak_window

        generator = torch.Generator().manual_seed(0)
        batch = 0.1 * torch.randn(self.chunk_batch, max(self.window, round(seconds * self.sample_rate)), generator=generator)
        batch = batch.to(self.device)
        with torch.inference_mode():
            if self.device.type == "cuda":
                return cuda_peak(self.runtime, (batch,), self.device)
            before = start_peak_window()
            output = self.runtime(batch)
            peak = peak_rss_mib() - before
        del output
        return peak

    def _resident_mib(self) -> float:
        """Memory in use now where the model runs: the process's RSS on CPU, allocated memory on CUDA."""
        from audiosep.bench.memory import MIB, start_peak_window

        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / MIB
        return start_peak_window()

    @functools.cached_property
    def _weights_sha256(self) -> str:
        """:func:`~audiosep.models.base.weights_sha256` of the plain model, once (one pass over the weights)."""
        return weights_sha256(self.model)

    def output_settings(self, keep_model_rate: bool = False, channel: int | None = None, subtype: str = "PCM_16") -> str:
        """A digest of what decides an output file: the weights, the model's constructor arguments and rate,
        dtype, stream block, output rate, channel, and the subtype written (:func:`~audiosep.io.output_subtype`
        of the input's; recorded only when not ``PCM_16``, what every output was before there was a choice,
        so that an unchanged 16-bit output still counts as this run's).

        Why: the WAV comment of :meth:`separate_file`'s outputs carries it, so a rerun with another
        checkpoint or other options does not take an old result for its own. Chunking is left out:
        it moves samples near chunk seams only, and ``--max-memory`` picks a slightly different
        chunk on every run.
        """
        self._sync_runtime()
        record = {
            "weights": self._weights_sha256, "sample_rate": self.sample_rate, "dtype": self.dtype,
            "model": getattr(self.model, "init_args", None),  # same weights, other computation (SepFormer tail)
            "stream_block_ms": self.stream_block_ms, "keep_model_rate": bool(keep_model_rate), "channel": channel,
        } | ({} if subtype == "PCM_16" else {"subtype": subtype})  # fmt: skip
        return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @functools.cached_property
    def _probe_pass(self) -> tuple[float, float | None]:
        """``(seconds, MiB)``: :func:`~audiosep.cost.estimated_peak_mib` of one item of :data:`MEMORY_PROBE_SECONDS`
        (or the model's window, if longer) through the model as it is now. Forgotten when the model changes
        (:meth:`_sync_runtime`)."""
        from audiosep.cost import estimated_peak_mib

        samples = max(self.window, round(MEMORY_PROBE_SECONDS * self.sample_rate))
        return samples / self.sample_rate, estimated_peak_mib(self.model, torch.zeros(1, samples, device="meta"))

    def pass_memory_mib(self, seconds: float) -> float | None:
        """Estimated memory (MiB) of one pass over ``chunk_batch`` chunks of ``seconds``, before any runs: the
        meta-device pass over one short item scaled by batch and length; None where there is no estimate."""
        probe_seconds, mib = self._probe_pass
        return None if mib is None else mib * self.chunk_batch * max(1.0, seconds / probe_seconds)

    def fit_chunk_to_available_memory(self) -> ChunkConfig:
        """Shorten the chunk when one pass over it would take more than
        :func:`~audiosep.bench.memory.memory_room_mib` (estimated on the meta device, before any pass); returns the chunk.

        Why: a small model file can describe a model whose activations need gigabytes per second of audio
        (thousands of filters at a stride of one sample); run as it is, such a pass is killed by the system
        or swaps, with nothing said. Streaming (small blocks) and a device without a figure are not checked.

        Raises:
            SeparationError: even a :data:`MIN_CHUNK_SECONDS` chunk (or the model's window) would not fit.
        """
        from audiosep.bench.memory import memory_room_mib

        if self._memory_checked == (self.chunk, self.chunk_batch) or self.stream_block_ms is not None:
            return self.chunk
        wanted = self.chunk.seconds
        need, room = self.pass_memory_mib(wanted), memory_room_mib(self.device)
        if need is not None and room is not None and need > room:
            seconds = wanted * room / need
            shortest = max(MIN_CHUNK_SECONDS, self.window / self.sample_rate)
            if seconds < shortest:
                raise SeparationError(
                    f"the model needs about {need:.0f} MiB of memory for a pass over {wanted:g} s of audio "
                    f"({self.pass_memory_mib(shortest):.0f} MiB for {shortest:g} s, the shortest chunk); "
                    f"{room:.0f} MiB can be used on {self.device}"
                )
            self.chunk = ChunkConfig(seconds, min(self.chunk.overlap_seconds, seconds / 4))
            log.warning("chunks of %.2f s: a pass over %g s would need about %.0f MiB, %.0f MiB can be used",
                        seconds, wanted, need, room)  # fmt: skip
        self._memory_checked = (self.chunk, self.chunk_batch)
        return self.chunk

    def fit_chunk_to_memory(self, max_mib: float) -> ChunkConfig:
        """Set and return the longest chunk whose passes keep memory under ``max_mib`` MiB (measured).

        Memory means the process's resident memory on CPU (Linux ``/proc``) and allocated memory on
        CUDA. Two probe passes (1 s and 3 s chunks) give the model's memory per second of audio; the
        chunk that fills 90 % of the room left (``max_mib`` less what is in use) is then run once and
        shortened until it fits (attention over chunks grows faster than linearly). The overlap is
        kept, or cut to a quarter of the chunk.

        Raises:
            ValueError: even a :data:`MIN_CHUNK_SECONDS` chunk does not fit, or no way to measure.
        """
        from audiosep.bench.memory import rss_supported

        if self.device.type == "cpu" and not rss_supported():
            raise ValueError("--max-memory needs Linux /proc to measure memory on this system")
        self.runtime(torch.zeros(self.chunk_batch, max(self.window, self.sample_rate // 4), device=self.device))
        one, three = self._pass_peak_mib(1.0), self._pass_peak_mib(3.0)
        per_second = max((three - one) / 2, three / 3, 1e-3)
        room = 0.9 * (max_mib - self._resident_mib())  # 10 % of the room kept for buffers and the allocator
        seconds = min(MAX_CHUNK_SECONDS, (room - one + per_second) / per_second)
        for _ in range(4):
            if seconds < MIN_CHUNK_SECONDS:
                break
            used = self._pass_peak_mib(seconds)
            if used <= room:
                overlap = min(self.chunk.overlap_seconds, seconds / 4)
                self.chunk = ChunkConfig(seconds, overlap)
                self._memory_checked = (self.chunk, self.chunk_batch)  # measured: the estimate does not overrule it
                log.info("chunks of %.2f s (overlap %.2f s) keep memory under %.0f MiB", seconds, overlap, max_mib)
                return self.chunk
            seconds *= 0.9 * room / used
        raise ValueError(
            f"--max-memory {max_mib:g} MiB is too little: {self._resident_mib():.0f} MiB are in use already and "
            f"the model needs about {one:.0f} MiB for a 1 s chunk"
        )

    def stream(self):
        """A fresh stream of this model (:func:`audiosep.streaming.open_stream`: causal Conv-TasNet or RE-SepFormer).

        Raises:
            ValueError: the model cannot stream (it looks ahead), or this separator runs int8 (a stream runs
                the plain fp32 model: it would not compute what :meth:`separate` does).
        """
        from audiosep.streaming import open_stream

        if self.dtype != "fp32":
            raise ValueError(f"streaming runs the plain fp32 model, not {self.dtype}")
        return open_stream(self.model)

    def _stream_pieces(self, read: Callable[[int, int], Tensor], length: int) -> Iterator[Tensor]:
        """The stateful stream over ``read(a, b)`` (mono at the model's rate) in ``stream_block_ms`` blocks."""
        stream = self.stream()
        block = max(1, round(self.stream_block_ms * self.sample_rate / 1000))
        span = block * max(1, OUTPUT_BLOCK // block)  # read in larger spans, feed the stream block by block
        for first in range(0, length, span):
            samples = read(first, min(first + span, length))
            for start in range(0, samples.shape[-1], block):
                piece = stream.process(samples[None, start : start + block])[0]
                if piece.shape[-1]:
                    yield piece
        yield stream.flush()[0]

    def _overlap_add_pieces(self, read: Callable[[int, int], Tensor], length: int) -> Iterator[Tensor]:
        """Chunks of ``read(a, b)`` through the model, aligned and cross-faded, yielded as soon as final.

        Only the overlap still to be blended is kept between chunks, so memory follows the chunk size,
        not ``length``.
        """
        self.fit_chunk_to_available_memory()
        chunk, overlap = self.chunk.samples(self.sample_rate)
        grid = next(g for g in model_grids(self.model) if g <= chunk - overlap)
        starts, chunk = chunk_layout(length, chunk, overlap, grid)
        pending = pending_weight = None  # blended output and weights over [next start, previous end)
        for index, (start, estimate) in enumerate(self._chunk_estimates(read, starts, chunk, length)):
            if pending is not None:  # (a zero weight: a chunk's edge only, no reference there)
                estimate = align_to_previous(estimate, pending / pending_weight.clamp_min(1e-12))
            fade_in = overlap if index > 0 else 0
            fade_out = overlap if index < len(starts) - 1 else 0
            window = crossfade_window(estimate.shape[-1], fade_in, fade_out)
            blended, weight = estimate * window, window
            if pending is not None:
                shared = pending.shape[-1]
                blended[:, :shared] += pending
                weight[:shared] += pending_weight
            final = (starts[index + 1] - start) if index + 1 < len(starts) else estimate.shape[-1]
            yield blended[:, :final] / weight[:final]
            pending, pending_weight = blended[:, final:], weight[final:]

    def _pieces(self, read: Callable[[int, int], Tensor], length: int) -> Iterator[Tensor]:
        """Separated ``[S, n]`` pieces covering ``[0, length)`` of ``read(a, b)`` in order (streamed or chunked)."""
        if self.stream_block_ms is not None:
            pieces = self._stream_pieces(read, length)
        else:
            pieces = self._overlap_add_pieces(read, length)
        done = 0
        for piece in pieces:
            if not torch.isfinite(piece).all():
                raise SeparationError(
                    f"the model produced non-finite output (NaN/Inf) after {done / self.sample_rate:.3f} s; nothing written"
                )
            done += piece.shape[-1]
            yield piece

    def separate_at_model_rate(self, mixture: Tensor) -> Tensor:
        """``mixture[T]`` at the model's rate -> ``[S, T]`` float32, chunked with overlap when long.

        The result is an ordinary tensor (not an inference-mode one), so in-place edits and autograd
        work on it whatever the input's rate was.

        Raises:
            SeparationError: the mixture is not a float ``[T]`` tensor at least the model's window long,
                holds NaN/Inf, or the model's output is not finite.
        """
        if not isinstance(mixture, Tensor) or not mixture.is_floating_point() or mixture.dim() != 1:
            raise SeparationError(f"the mixture must be a float [T] tensor at the model's rate, got {kind_of(mixture)}")
        check_sample_values(mixture, SeparationError)
        self.check_length(mixture.shape[-1], self.sample_rate)
        return self._separated(mixture)

    def _separated(self, mixture: Tensor) -> Tensor:
        """:meth:`separate_at_model_rate` of a mixture already checked (float ``[T]``, finite, long enough)."""
        mixture = mixture.detach().float()  # float64 and half inputs too: the model's weights are float32
        self._sync_runtime()
        with torch.inference_mode():
            sources = torch.cat(list(self._pieces(lambda a, b: mixture[a:b], mixture.shape[-1])), dim=-1)
        return sources.clone()

    def _chunk_estimates(
        self, read: Callable[[int, int], Tensor], starts: list[int], chunk: int, length: int
    ) -> Iterator[tuple[int, Tensor]]:
        """``(start, estimate[S, n])`` per chunk, ``chunk_batch`` chunks per forward pass (all are ``chunk`` long
        when there are several), with a chunks bar on a terminal when :attr:`progress` is set."""
        from tqdm import tqdm

        bar = tqdm(total=len(starts), desc="chunks", unit="chunk", leave=False, file=sys.stderr,
                   disable=None if self.progress and len(starts) > 1 else True)  # fmt: skip
        with bar:
            for first in range(0, len(starts), self.chunk_batch):
                group = starts[first : first + self.chunk_batch]
                pieces = [read(start, min(start + chunk, length)) for start in group]
                # The last chunk may end before its grid-aligned size: it runs in a pass of its own length.
                estimates: list[Tensor] = [torch.empty(0)] * len(pieces)
                for size in dict.fromkeys(piece.shape[-1] for piece in pieces):
                    rows = [i for i, piece in enumerate(pieces) if piece.shape[-1] == size]
                    batch = torch.stack([pieces[i] for i in rows]).to(self.device)
                    for row, estimate in zip(rows, self.runtime(batch).float().cpu(), strict=True):
                        estimates[row] = estimate
                yield from zip(group, estimates, strict=True)
                bar.update(len(group))

    def separate(self, waveform: Tensor, sample_rate: int, keep_model_rate: bool = False) -> Tensor:
        """Separate ``waveform`` (``[T]`` or ``[C, T]``, any rate) into ``[num_sources, T']``.

        Multi-channel input is averaged to mono. The output is at ``sample_rate`` (same length
        as the input) unless ``keep_model_rate``.

        Raises:
            SeparationError: non-finite input, input shorter than the model's window, or
                non-finite model output.
        """
        mono = mono_waveform(waveform, "the waveform", SEPARATE_ONE_CHANNEL, log, SeparationError)
        check_sample_values(mono, SeparationError)
        self.check_length(mono.shape[-1], sample_rate)
        if sample_rate != self.sample_rate:
            log.info("resampling %d Hz -> %d Hz for the model", sample_rate, self.sample_rate)
        sources = self._separated(resampled(mono, sample_rate, self.sample_rate, SeparationError))  # checked above: no second pass
        if keep_model_rate or sample_rate == self.sample_rate:
            return sources
        restored = resampled(sources, self.sample_rate, sample_rate, SeparationError)
        restored = torch.nn.functional.pad(restored, (0, max(0, mono.shape[-1] - restored.shape[-1])))
        restored = restored[:, : mono.shape[-1]]
        if not torch.isfinite(restored).all():
            raise SeparationError("non-finite output (NaN/Inf) after resampling; nothing written")
        return restored

    def separate_file(
        self,
        path: str | os.PathLike,
        out_dir: str | os.PathLike,
        keep_model_rate: bool = False,
        *,
        relative_name: str | os.PathLike | None = None,
        channel: int | None = None,
        warn: Callable[[str], object] | None = None,
        settings: str | None = None,
        subtype: str = "auto",
    ) -> list[Path]:
        """Separate one file into ``out_dir/<relative_name>_s<k>.wav``.

        ``relative_name`` defaults to the input's stem and may hold folders (``a/x`` ->
        ``out_dir/a/x_s1.wav``). ``channel`` picks one channel (0-based) instead of the mixdown.
        ``subtype``: the outputs' WAV subtype, by default the input's precision (:func:`output_subtype`);
        integer-PCM sources are scaled as one so that none clips, float ones keep their level.
        Each output's WAV comment names the input and the settings (:func:`source_tag`).
        The file is checked whole first, then read, separated and written in blocks (memory follows
        the chunk size, not the file's length); the same numbers as :meth:`separate` on the whole
        waveform. All outputs appear together or none. An all-zero input is not an error: it gets
        silent outputs and a warning (``warn(message)``, default ``logging.warning``). ``settings``: the
        :meth:`output_settings` of these options and the subtype written when the caller has just computed it
        (it probes every weight).

        Raises:
            SeparationError: the file cannot be read or separated (see
                :class:`~audiosep.audio_blocks.CheckedAudio`, :meth:`separate`); ``err.path`` names it.
            ValueError: an unknown ``subtype``.
        """
        check_output_subtype(subtype)  # before any work
        path = Path(path)
        name = Path(relative_name) if relative_name is not None else Path(path.stem)
        try:
            with CheckedAudio(path, channel) as audio:
                if audio.channels > 1:
                    log.info("mixing %d channels down to mono", audio.channels)
                self.check_length(audio.frames, audio.sample_rate)
                cancelling = cancelling_channels_warning(str(path), audio.channels, audio.mixdown_loss_db,
                                                         SEPARATE_ONE_CHANNEL)  # it would be separated into silence
                if cancelling:
                    (warn or log.warning)(cancelling)
                elif audio.silent:
                    (warn or log.warning)(f"{path}: all samples are zero (silent); writing silent outputs")
                outputs = output_paths(out_dir, name, self.num_sources)
                written = output_subtype(audio.subtype, subtype)
                tag = source_tag(path, settings or self.output_settings(keep_model_rate, channel, written))
                return self._separate_audio(audio, outputs, keep_model_rate, tag, written)
        except AudioError as err:
            raise SeparationError(err.reason, path) from err

    @torch.inference_mode()
    def _separate_audio(
        self, audio: CheckedAudio, outputs: list[Path], keep_model_rate: bool, tag: str, subtype: str
    ) -> list[Path]:
        """Separate ``audio`` block by block into ``outputs`` of WAV ``subtype`` (written atomically).

        Pass 1 writes the model-rate sources to a float32 scratch file beside the outputs; pass 2 finds
        the peak of the sources at the output rate; pass 3 writes them, for integer PCM scaled as one so
        that none clips.
        """
        rate, frames = audio.sample_rate, audio.frames
        model_length = resampled_length(frames, rate, self.sample_rate)
        out_rate, out_length = (self.sample_rate, model_length) if keep_model_rate else (rate, frames)
        data_bytes = out_length * WAV_SAMPLE_BYTES[subtype]
        if data_bytes > WAV_MAX_DATA_BYTES:  # libsndfile writes the file, whose header then misstates its length
            raise SeparationError(f"each output would hold {data_bytes / 2**30:.2f} GiB of {subtype} samples, more "
                                  "than a WAV file can (4 GiB); split the file, or use a smaller --subtype")  # fmt: skip
        if rate != self.sample_rate:
            log.info("resampling %d Hz -> %d Hz for the model", rate, self.sample_rate)

        def mixture(start: int, stop: int) -> Tensor:
            return resample_span(lambda a, b: to_mono(audio.read(a, b)), frames, rate, self.sample_rate, start, stop)

        outputs[0].parent.mkdir(parents=True, exist_ok=True)
        with _Scratch(outputs[0], self.num_sources) as scratch, atomic_paths(outputs) as temps:
            if not audio.silent:
                for piece in self._pieces(mixture, model_length):
                    scratch.append(piece)

            def separated(start: int, stop: int) -> Tensor:
                return resample_span(scratch.read, model_length, self.sample_rate, out_rate, start, stop)

            def blocks() -> Iterator[Tensor]:
                for start in range(0, out_length, OUTPUT_BLOCK):
                    yield separated(start, min(start + OUTPUT_BLOCK, out_length))

            peak = max(float(block.abs().max()) for block in blocks())
            if not math.isfinite(peak):
                raise SeparationError("non-finite output (NaN/Inf) after resampling; nothing written")
            if subtype == "FLOAT" and peak > MAX_SAMPLE:  # what no input may hold (audio_blocks): a broken model
                raise SeparationError(f"the sources peak at {peak:.3g}, beyond +-{MAX_SAMPLE:g} (+80 dBFS); "
                                      "nothing written")  # fmt: skip
            scale = PEAK_LIMIT / peak if peak > PEAK_LIMIT and subtype != "FLOAT" else 1.0
            if scale != 1.0:
                log.info("%s: scaling all sources by %.3f to avoid clipping", audio.path, scale)
            with full_disk_named(outputs[0]):
                writers = [sf.SoundFile(soundfile_name(tmp), "w", out_rate, 1, subtype, format="WAV") for tmp in temps]
                try:
                    for writer in writers:
                        writer.comment = tag
                    for block in blocks():
                        for writer, source in zip(writers, block * scale, strict=True):
                            writer.write(source.numpy())
                finally:
                    for writer in writers:
                        writer.close()
        return outputs

class _Scratch:
    """A float32 scratch file of ``[S, T]`` audio beside ``output``: appended in pieces, read in spans.

    Named like ``output``'s temp files (:func:`audiosep.io.temp_prefix`), so that the clean-up of a
    killed run's leftovers (:func:`audiosep.io.remove_temp_files`) removes it too.
    """

    def __init__(self, output: Path, num_sources: int) -> None:
        fd, name = tempfile.mkstemp(dir=output.parent, prefix=temp_prefix(output), suffix=TEMP_SUFFIX)
        self.file = os.fdopen(fd, "w+b")
        self.path = Path(name)
        self.num_sources = num_sources
        self.length = 0

    def append(self, piece: Tensor) -> None:
        """Add ``piece[S, n]`` at the end."""
        self.file.seek(0, os.SEEK_END)
        self.file.write(piece.T.contiguous().numpy().astype(np.float32, copy=False).tobytes())
        self.length += piece.shape[-1]

    def read(self, start: int, stop: int) -> Tensor:
        """Samples ``[start, stop)`` as ``[S, n]``; zeros where nothing was appended (a silent input)."""
        start, stop = max(0, start), max(start, stop)
        span = torch.zeros(self.num_sources, stop - start)
        have = min(stop, self.length) - start
        if have > 0:
            self.file.seek(start * self.num_sources * 4)
            data = np.fromfile(self.file, dtype=np.float32, count=have * self.num_sources)
            span[:, :have] = torch.from_numpy(data.reshape(have, self.num_sources).T.copy())
        return span

    def __enter__(self) -> _Scratch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


def limit_peak(sources: Tensor, name: str, peak_limit: float = PEAK_LIMIT) -> Tensor:
    """Scale all sources by one factor so that none clips in 16-bit files (relative levels kept)."""
    peak = float(sources.abs().max())
    if peak <= peak_limit:
        return sources
    log.info("%s: scaling all sources by %.3f to avoid clipping", name, peak_limit / peak)
    return sources * (peak_limit / peak)


def write_sources_atomic(
    sources: Tensor, sample_rate: int, paths: Sequence[str | os.PathLike], subtype: str = "PCM_16"
) -> list[Path]:
    """Write ``sources[k]`` to ``paths[k]`` (wav) through temp files renamed together on success.

    On any error no output of this set appears and no temp file is left (:func:`audiosep.io.atomic_paths`).

    Raises:
        ValueError: sources that are not a float ``[S, T]`` tensor, a count mismatch, two paths naming one file
            (or differing only in case, one file on macOS and Windows disks),
            a sample rate that is not a whole number of Hz in range, a subtype WAV cannot hold, or samples that are
            not finite or (any subtype but FLOAT and DOUBLE) beyond [-1, 1], which would be written as
            full-scale clicks or clipped (scale with :func:`limit_peak` first).
    """
    if not isinstance(sources, Tensor) or not sources.is_floating_point() or sources.dim() != 2:
        raise ValueError(f"sources must be a float [S, T] tensor, got {kind_of(sources)}")  # [S, 1, T]: S files of T channels
    if len(sources) != len(paths):
        raise ValueError(f"{len(sources)} sources for {len(paths)} paths")
    # "a.wav" and "./a.wav" (reviewer), or "A.wav" and "a.wav" on a case-insensitive disk: a source lost.
    if len({os.path.realpath(path).casefold() for path in paths}) != len(paths):
        raise ValueError(f"two of the paths name one file (names are compared ignoring case): {', '.join(map(str, paths))}")
    sample_rate, subtype = check_sample_rate(sample_rate), str(subtype).upper()
    if not sf.check_format("WAV", subtype):
        raise ValueError(f"subtype {subtype!r} cannot be written as WAV")
    if sources.dtype in (torch.float16, torch.bfloat16):  # soundfile writes float32 and float64 arrays only
        sources = sources.float()
    if not torch.isfinite(sources).all():
        raise ValueError(f"{int((~torch.isfinite(sources)).sum())} non-finite sample(s) (NaN/Inf) in the sources")
    peak = float(sources.abs().max()) if sources.numel() else 0.0
    if subtype not in ("FLOAT", "DOUBLE") and peak > 1.0:  # PCM, but ULAW and ALAW clip too (reviewer)
        raise ValueError(f"peak {peak:.3g} is beyond [-1, 1] and would clip in {subtype}; scale with limit_peak first")
    with atomic_paths(paths) as temps:
        for source, tmp, path in zip(sources, temps, paths, strict=True):
            with full_disk_named(Path(path)):
                sf.write(soundfile_name(tmp), source.detach().cpu().numpy(), sample_rate, subtype=subtype, format="WAV")
    return [Path(p) for p in paths]


@contextlib.contextmanager
def full_disk_named(path: Path) -> Iterator[None]:
    """Turn libsndfile's "System error." on a full disk into an ``OSError`` (ENOSPC) naming ``path``.

    Asked while the failed write's temp files still fill the disk: once they are removed it has room again,
    and the check after the fact never saw a full disk (reviewer).
    """
    try:
        yield
    except sf.LibsndfileError as err:
        folder = next(parent for parent in path.absolute().parents if parent.exists())
        if shutil.disk_usage(folder).free == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err
        raise
