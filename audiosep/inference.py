"""Separation of real audio of any length: files in, files out, bounded memory, no silent damage.

Long inputs are cut into overlapping chunks; each chunk's sources are reordered to match the
previous chunk on their overlap (the model's output order is arbitrary), then cross-faded.
Channel mixdown and resampling are explicit and logged.

Files are read with checks (:func:`read_mixture`): a missing, empty, corrupt, truncated or
unknown-format file, non-finite samples, or an out-of-range channel raise :class:`SeparationError`
naming the file and the reason; so do inputs shorter than the model's window and non-finite model
outputs. Outputs are written atomically (all sources of a file appear together, or none).
"""

from __future__ import annotations

import logging
import math
import os
import re
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import torch
from torch import Tensor, nn

from audiosep.checkpoint import CheckpointError, load_model
from audiosep.data.audio import resample, to_mono
from audiosep.errors import UserError
from audiosep.io import atomic_paths
from audiosep.losses import best_permutation
from audiosep.models.registry import SEPARATOR_CLASSES
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
InferenceDtype = Literal["fp32", "int8"]

READ_BLOCK_FRAMES = 1 << 16


class SeparationError(UserError, ValueError):
    """This input cannot be separated: ``reason`` says why, ``path`` names the file when known.

    A :class:`~audiosep.errors.UserError` (the CLI prints one line) and a ``ValueError``.
    """

    def __init__(self, reason: str, path: str | os.PathLike | None = None) -> None:
        self.reason = reason
        self.path = None if path is None else Path(path)
        super().__init__(reason if path is None else f"{path}: {reason}")


# ----------------------------------------------------------------------------------------------
# Reading with checks


def _libsndfile_message(err: Exception) -> str:
    message = getattr(err, "error_string", None) or str(err)
    return message.strip().rstrip(".")


# PCM, IEEE float, A-law, mu-law, extensible: one block per frame.
_FRAME_ALIGNED_WAV_FORMATS = frozenset({0x0001, 0x0003, 0x0006, 0x0007, 0xFFFE})


def _wav_declared_frames(path: Path) -> int | None:
    """Frames the RIFF/RIFX/RF64 ``data`` chunk header declares, or ``None`` (not a WAV, no data).

    libsndfile quietly shortens a ``data`` chunk that runs past the end of the file, so a truncated
    WAV would read as a shorter, complete one; this reads the declared size itself.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(12)
            if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX", b"RF64"):
                return None
            endian = ">" if head[:4] == b"RIFX" else "<"
            block_align = ds64_data_size = None
            position = 12
            for _ in range(4096):  # bounded walk: a crafted file cannot make this loop for long
                if position + 8 > size:
                    return None
                handle.seek(position)
                chunk_id, chunk_size = struct.unpack(f"{endian}4sI", handle.read(8))
                if chunk_id == b"ds64":
                    body = handle.read(16)
                    if len(body) == 16:
                        ds64_data_size = struct.unpack("<QQ", body)[1]
                elif chunk_id == b"fmt ":
                    body = handle.read(16)
                    if len(body) >= 14:
                        format_tag, block_align = struct.unpack(f"{endian}H10xH", body[:14])
                        if format_tag not in _FRAME_ALIGNED_WAV_FORMATS:  # compressed: blocks != frames
                            return None
                elif chunk_id == b"data":
                    if head[:4] == b"RF64" and chunk_size == 0xFFFFFFFF and ds64_data_size is not None:
                        chunk_size = ds64_data_size
                    return chunk_size // block_align if block_align else None
                position += 8 + chunk_size + (chunk_size & 1)
    except (OSError, struct.error):
        return None
    return None


_LOG_SHORT_CHUNK = re.compile(r"^\s*(?:data|SSND|Data Size)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.M)


def _log_says_truncated(extra_info: str) -> bool:
    """libsndfile's log notes a data chunk longer than the file (AIFF, CAF, AU, ...)."""
    return any(int(declared) > int(actual) for declared, actual in _LOG_SHORT_CHUNK.findall(extra_info))


def _read_frames(handle: sf.SoundFile, path: Path, promised: int) -> np.ndarray:
    """All frames as ``float32 [T, C]``, read in blocks (memory follows the data, not the header)."""
    blocks: list[np.ndarray] = []
    got = 0
    while True:
        try:
            block = handle.read(READ_BLOCK_FRAMES, dtype="float32", always_2d=True)
        except (RuntimeError, ValueError, TypeError, OSError) as err:
            raise SeparationError(
                f"truncated or corrupt: reading failed after {got} of {promised} frames "
                f"({_libsndfile_message(err)})",
                path,
            ) from err
        blocks.append(block)
        got += block.shape[0]
        if block.shape[0] < READ_BLOCK_FRAMES:
            break
    if not blocks:
        return np.zeros((0, handle.channels), dtype=np.float32)
    return np.concatenate(blocks) if len(blocks) > 1 else blocks[0]


def read_mixture(path: str | os.PathLike, channel: int | None = None) -> tuple[Tensor, int]:
    """Read an audio file with checks: ``(float32 Tensor[C, T], sample_rate)``.

    Integer and float subtypes are read as float32. ``channel`` (0-based) keeps one channel
    (``[1, T]``); ``None`` keeps them all (callers mix down).

    Raises:
        SeparationError: the path is missing, a directory or not a regular file; the file is empty,
            in an unknown format, corrupt or truncated (fewer frames than its header promises);
            ``channel`` is out of range; the used samples are not all finite.
    """
    path = Path(path)
    if not path.exists():
        raise SeparationError("no such file", path)
    if path.is_dir():
        raise SeparationError("is a directory, not an audio file", path)
    if not path.is_file():
        raise SeparationError("not a regular file", path)
    if path.stat().st_size == 0:
        raise SeparationError("empty file (0 bytes)", path)
    try:
        handle = sf.SoundFile(str(path))
    except (RuntimeError, ValueError, TypeError, OSError) as err:
        message = _libsndfile_message(err)
        lowered = message.lower()
        kind = (
            "unknown or unsupported format: "
            if "not recognised" in lowered or "not supported" in lowered
            else "corrupt file: "
            if "malformed" in lowered or "error in" in lowered
            else ""
        )
        raise SeparationError(f"cannot read audio ({kind}{message})", path) from err
    with handle:
        sample_rate, channels = int(handle.samplerate), int(handle.channels)
        promised = max(int(handle.frames), _wav_declared_frames(path) or 0)
        truncated_by_log = _log_says_truncated(handle.extra_info)
        if channel is not None and not 0 <= channel < channels:
            raise SeparationError(
                f"channel {channel} does not exist: the file has {channels} channel(s) (0-{channels - 1})",
                path,
            )
        data = _read_frames(handle, path, promised)
    frames = data.shape[0]
    if frames < promised or truncated_by_log:
        raise SeparationError(
            f"truncated: the header promises {promised} frames ({promised / sample_rate:.3f} s), "
            f"the file holds {frames} ({frames / sample_rate:.3f} s)",
            path,
        )
    if frames == 0:
        raise SeparationError("holds no audio samples", path)
    if channel is not None:
        data = data[:, channel : channel + 1]
    finite = np.isfinite(data)
    if not finite.all():
        bad = np.argwhere(~finite)
        first_frame, first_channel = (int(v) for v in bad[0])
        raise SeparationError(
            f"{len(bad)} non-finite sample(s) (NaN/Inf), first at {first_frame / sample_rate:.3f} s "
            f"(frame {first_frame}, channel {first_channel if channel is None else channel})",
            path,
        )
    return torch.from_numpy(np.ascontiguousarray(data.T)), sample_rate


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
        if not 0 < self.overlap_seconds < self.seconds / 2:
            raise ValueError(
                f"overlap {self.overlap_seconds} s must be in (0, chunk/2) for a {self.seconds} s chunk"
            )

    def samples(self, sample_rate: int) -> tuple[int, int]:
        """``(chunk, overlap)`` in samples."""
        return int(self.seconds * sample_rate), int(self.overlap_seconds * sample_rate)


def chunk_starts(length: int, chunk: int, overlap: int) -> list[int]:
    """Start offsets of chunks of ``chunk`` samples covering ``length`` with at least ``overlap`` shared."""
    if length <= chunk:
        return [0]
    hop = chunk - overlap
    starts = list(range(0, length - chunk, hop))
    return starts + [length - chunk]


def crossfade_window(length: int, fade_in: int, fade_out: int) -> Tensor:
    """Weights 1 inside, linear ramps (strictly positive) over the first/last samples."""
    window = torch.ones(length)
    if fade_in:
        window[:fade_in] = torch.arange(1, fade_in + 1) / (fade_in + 1)
    if fade_out:
        window[length - fade_out :] = torch.arange(fade_out, 0, -1) / (fade_out + 1)
    return window


GAIN_LIMIT = 8.0  # a chunk's least-squares gain is kept within [1/8, 8] in magnitude
SILENT_OVERLAP = 1e-6  # overlap energy, relative to the chunk's, below which no gain is fitted


def align_to_previous(current: Tensor, previous: Tensor) -> Tensor:
    """Match ``current[S, T]`` to the output so far: ``previous[S, n]`` over their ``n`` shared samples.

    Sources are reordered by the absolute correlation of the overlaps (a model may flip a source's
    sign from one chunk to the next), then each is scaled by the least-squares gain, sign included,
    that maps its overlap onto the previous one. A source nearly silent in the overlap keeps gain 1.
    """
    head = current[:, : previous.shape[-1]]
    cur = head / (head.norm(dim=-1, keepdim=True) + 1e-8)
    prev = previous / (previous.norm(dim=-1, keepdim=True) + 1e-8)
    similarity = (cur @ prev.T).abs()  # S_cur, S_prev
    perm = best_permutation(similarity.unsqueeze(0))[0]
    current, head = current[perm], head[perm]
    head_energy = head.square().sum(-1)
    gain = (head * previous).sum(-1) / head_energy.clamp_min(1e-20)
    reliable = (head_energy > SILENT_OVERLAP * current.square().sum(-1)) & (
        previous.square().sum(-1) > SILENT_OVERLAP * current.square().sum(-1)
    )
    magnitude = gain.abs().clamp(1 / GAIN_LIMIT, GAIN_LIMIT)
    gain = torch.where(reliable, torch.sign(gain) * magnitude, torch.ones_like(gain))
    return current * gain.unsqueeze(-1)


def model_window(model: nn.Module) -> int:
    """The shortest input ``model`` can separate: its encoder's kernel (1 when it has none)."""
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, nn.Conv1d):
        return int(encoder.kernel_size[0])
    kernel = getattr(model, "enc_kernel_size", None)
    return int(kernel) if isinstance(kernel, int) else 1


def output_paths(out_dir: str | os.PathLike, name: str | os.PathLike, num_sources: int) -> list[Path]:
    """``out_dir/<name>_s1.wav ... _s<num_sources>.wav``; ``name`` may hold folders (``a/x``)."""
    base = Path(out_dir) / Path(name)
    return [base.parent / f"{base.name}_s{k + 1}.wav" for k in range(num_sources)]


class Separator:
    """Separate mixtures with a trained model.

    ``separator.model`` is the plain model (hooks, export, pruning); ``separator.runtime`` is what
    runs: ``prepare_for_inference(model)`` when ``optimize`` (the default), else the plain model;
    with ``dtype="int8"``, :func:`audiosep.quantize.quantize_for_inference` (CPU). With
    ``stream_block_ms``, a causal Conv-TasNet separates through its stateful stream in blocks of
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
        self.model = model.to(self.device).eval()
        self.dtype = dtype
        self.stream_block_ms = stream_block_ms
        self.progress = False  # a chunks bar for long inputs (on a terminal only); audiosep infer sets it
        if stream_block_ms is not None:
            self.stream()  # refuses a model that cannot stream, before any file is read
            if stream_block_ms <= 0 or dtype != "fp32" or self.device.type != "cpu":
                raise ValueError("streaming runs the plain fp32 model on CPU in blocks of a positive length")
        if dtype == "int8":
            if self.device.type != "cpu" or not optimize:
                raise ValueError("int8 inference runs on CPU with the inference transform (no --no-optimize)")
            from audiosep.quantize import quantize_for_inference

            self.runtime = quantize_for_inference(self.model)
        elif dtype == "fp32":
            self.runtime = prepare_for_inference(self.model) if optimize else self.model
        else:
            raise ValueError(f"unknown inference dtype {dtype!r}; valid: fp32, int8")
        self.optimized = optimize
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
        """Raise :class:`SeparationError` when ``num_samples`` at ``sample_rate`` is under the window."""
        at_model_rate = math.ceil(num_samples * self.sample_rate / sample_rate)
        if at_model_rate < self.window:
            raise SeparationError(
                f"too short: {num_samples} samples at {sample_rate} Hz ({1000 * num_samples / sample_rate:.1f} ms); "
                f"the model needs at least {self.window} samples at {self.sample_rate} Hz "
                f"({1000 * self.window / self.sample_rate:.1f} ms)"
            )

    def stream(self):
        """A fresh :class:`audiosep.streaming.ConvTasNetStream` of this model (causal Conv-TasNet only).

        Raises:
            ValueError: the model cannot stream (it looks ahead).
        """
        from audiosep.streaming import ConvTasNetStream

        return ConvTasNetStream(self.model)

    def _separate_streaming(self, mixture: Tensor) -> Tensor:
        """``mixture[T]`` through the stateful stream in ``stream_block_ms`` blocks -> ``[S, T]``."""
        stream = self.stream()
        block = max(1, round(self.stream_block_ms * self.sample_rate / 1000))
        parts = [stream.process(mixture[None, start : start + block]) for start in range(0, mixture.shape[-1], block)]
        output = torch.cat([*parts, stream.flush()], dim=-1)[0]
        if not torch.isfinite(output).all():
            raise SeparationError("the model produced non-finite output (NaN/Inf); nothing written")
        return output

    @torch.inference_mode()
    def separate_at_model_rate(self, mixture: Tensor) -> Tensor:
        """``mixture[T]`` at the model's rate -> ``[S, T]``, chunked with overlap when long.

        Raises:
            SeparationError: the model's output is not finite (NaN/Inf).
        """
        if self.stream_block_ms is not None:
            return self._separate_streaming(mixture)
        chunk, overlap = self.chunk.samples(self.sample_rate)
        length = mixture.shape[-1]
        starts = chunk_starts(length, chunk, overlap)
        output: Tensor | None = None
        weight = torch.zeros(length)
        previous_end = 0
        for index, (start, estimate) in enumerate(self._chunk_estimates(mixture, starts, chunk)):
            end = min(start + chunk, length)
            if output is None:
                output = torch.zeros(estimate.shape[0], length)
            else:
                accumulated = output[:, start:previous_end] / weight[start:previous_end]
                estimate = align_to_previous(estimate, accumulated)
            fade_in = overlap if index > 0 else 0
            fade_out = overlap if index < len(starts) - 1 else 0
            window = crossfade_window(end - start, fade_in, fade_out)
            output[:, start:end] += estimate * window
            weight[start:end] += window
            previous_end = end
        return output / weight

    def _chunk_estimates(self, mixture: Tensor, starts: list[int], chunk: int) -> Iterator[tuple[int, Tensor]]:
        """``(start, estimate[S, n])`` per chunk, ``chunk_batch`` chunks per forward pass (all are ``chunk`` long
        when there are several), with a chunks bar on a terminal when :attr:`progress` is set."""
        from tqdm import tqdm

        bar = tqdm(total=len(starts), desc="chunks", unit="chunk", leave=False, file=sys.stderr,
                   disable=None if self.progress and len(starts) > 1 else True)  # fmt: skip
        with bar:
            for first in range(0, len(starts), self.chunk_batch):
                group = starts[first : first + self.chunk_batch]
                batch = torch.stack([mixture[start : start + chunk] for start in group]).to(self.device)
                estimates = self.runtime(batch).float().cpu()  # [b, S, n]
                for start, estimate in zip(group, estimates, strict=True):
                    if not torch.isfinite(estimate).all():
                        end = min(start + chunk, mixture.shape[-1])
                        raise SeparationError(
                            f"the model produced non-finite output (NaN/Inf) at {start / self.sample_rate:.3f}-"
                            f"{end / self.sample_rate:.3f} s; nothing written"
                        )
                    yield start, estimate
                bar.update(len(group))

    def _to_mono(self, waveform: Tensor) -> Tensor:
        if waveform.dim() == 2 and waveform.shape[0] > 1:
            log.info("mixing %d channels down to mono", waveform.shape[0])
        return to_mono(waveform).float()

    def separate(self, waveform: Tensor, sample_rate: int, keep_model_rate: bool = False) -> Tensor:
        """Separate ``waveform`` (``[T]`` or ``[C, T]``, any rate) into ``[num_sources, T']``.

        Multi-channel input is averaged to mono. The output is at ``sample_rate`` (same length
        as the input) unless ``keep_model_rate``.

        Raises:
            SeparationError: non-finite input, input shorter than the model's window, or
                non-finite model output.
        """
        mono = self._to_mono(waveform)
        if not torch.isfinite(mono).all():
            raise SeparationError(
                f"{int((~torch.isfinite(mono)).sum())} non-finite sample(s) (NaN/Inf) in the input"
            )
        self.check_length(mono.shape[-1], sample_rate)
        if sample_rate != self.sample_rate:
            log.info("resampling %d Hz -> %d Hz for the model", sample_rate, self.sample_rate)
        sources = self.separate_at_model_rate(resample(mono, sample_rate, self.sample_rate))
        if keep_model_rate or sample_rate == self.sample_rate:
            return sources
        restored = resample(sources, self.sample_rate, sample_rate)
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
    ) -> list[Path]:
        """Separate one file into ``out_dir/<relative_name>_s<k>.wav`` (16-bit PCM wav).

        ``relative_name`` defaults to the input's stem and may hold folders (``a/x`` ->
        ``out_dir/a/x_s1.wav``). ``channel`` picks one channel (0-based) instead of the mixdown.
        All outputs appear together or none. An all-zero input is not an error: it gets silent
        outputs and a warning (``warn(message)``, default ``logging.warning``).

        Raises:
            SeparationError: the file cannot be read or separated (see :func:`read_mixture`,
                :meth:`separate`); ``err.path`` names it.
        """
        path = Path(path)
        waveform, sample_rate = read_mixture(path, channel)
        name = Path(relative_name) if relative_name is not None else Path(path.stem)
        rate = self.sample_rate if keep_model_rate else sample_rate
        try:
            mono = self._to_mono(waveform)
            self.check_length(mono.shape[-1], sample_rate)
            if not mono.any():
                (warn or log.warning)(f"{path}: all samples are zero (silent); writing silent outputs")
                length = (
                    resample(mono, sample_rate, rate).shape[-1] if rate != sample_rate else mono.shape[-1]
                )
                sources = torch.zeros(self.num_sources, length)
            else:
                sources = limit_peak(self.separate(mono, sample_rate, keep_model_rate), str(path))
        except SeparationError as err:
            raise SeparationError(err.reason, path) from err
        return write_sources_atomic(sources, rate, output_paths(out_dir, name, len(sources)))


def limit_peak(sources: Tensor, name: str, peak_limit: float = 0.999) -> Tensor:
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
    """
    if len(sources) != len(paths):
        raise ValueError(f"{len(sources)} sources for {len(paths)} paths")
    with atomic_paths(paths) as temps:
        for source, tmp in zip(sources, temps, strict=True):
            sf.write(tmp, source.detach().cpu().numpy(), sample_rate, subtype=subtype, format="WAV")
    return [Path(p) for p in paths]
