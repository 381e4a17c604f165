"""Separation of real audio of any length: files in, files out, bounded memory.

Long inputs are cut into overlapping chunks; each chunk's sources are reordered to match the
previous chunk on their overlap (the model's output order is arbitrary), then cross-faded.
Channel mixdown and resampling are explicit and logged.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
import torch
from torch import Tensor, nn

from audiosep.checkpoint import load_model
from audiosep.data.audio import read_audio, resample, to_mono
from audiosep.losses import best_permutation
from audiosep.transcriber import Transcriber

__all__ = ["ChunkConfig", "Separator", "Transcriber", "limit_peak", "write_sources_atomic"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkConfig:
    """Chunked inference: ``seconds`` per chunk, ``overlap_seconds`` shared by neighbours."""

    seconds: float = 16.0
    overlap_seconds: float = 2.0

    def __post_init__(self) -> None:
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


def align_to_previous(current: Tensor, previous: Tensor) -> Tensor:
    """Reorder ``current[S, T]`` so that its first ``n`` samples best correlate with ``previous[S, n]``."""
    head = current[:, : previous.shape[-1]]
    cur = head / (head.norm(dim=-1, keepdim=True) + 1e-8)
    prev = previous / (previous.norm(dim=-1, keepdim=True) + 1e-8)
    similarity = cur @ prev.T  # S_cur, S_prev
    perm = best_permutation(similarity.unsqueeze(0))[0]
    return current[perm]


class Separator:
    """Separate mixtures with a trained model.

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
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.sample_rate = sample_rate
        self.chunk = chunk or ChunkConfig()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **kwargs) -> Separator:
        """Rebuild from an audiosep model file or Lightning ``.ckpt`` (no recipe needed)."""
        model, metadata = load_model(path)
        sample_rate = metadata.get("sample_rate")
        if not sample_rate:
            raise ValueError(f"{path}: the checkpoint does not record the model's sample rate")
        return cls(model, int(sample_rate), **kwargs)

    @torch.inference_mode()
    def separate_at_model_rate(self, mixture: Tensor) -> Tensor:
        """``mixture[T]`` at the model's rate -> ``[S, T]``, chunked with overlap when long."""
        chunk, overlap = self.chunk.samples(self.sample_rate)
        length = mixture.shape[-1]
        starts = chunk_starts(length, chunk, overlap)
        output: Tensor | None = None
        weight = torch.zeros(length)
        previous_end = 0
        for index, start in enumerate(starts):
            end = min(start + chunk, length)
            estimate = self.model(mixture[start:end].to(self.device).unsqueeze(0))[0].float().cpu()  # S, n
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

    def separate(self, waveform: Tensor, sample_rate: int, keep_model_rate: bool = False) -> Tensor:
        """Separate ``waveform`` (``[T]`` or ``[C, T]``, any rate) into ``[num_sources, T']``.

        Multi-channel input is averaged to mono. The output is at ``sample_rate`` (same length
        as the input) unless ``keep_model_rate``.
        """
        if waveform.dim() == 2 and waveform.shape[0] > 1:
            log.info("mixing %d channels down to mono", waveform.shape[0])
        mono = to_mono(waveform).float()
        if sample_rate != self.sample_rate:
            log.info("resampling %d Hz -> %d Hz for the model", sample_rate, self.sample_rate)
        sources = self.separate_at_model_rate(resample(mono, sample_rate, self.sample_rate))
        if keep_model_rate or sample_rate == self.sample_rate:
            return sources
        restored = resample(sources, self.sample_rate, sample_rate)
        return torch.nn.functional.pad(restored, (0, max(0, mono.shape[-1] - restored.shape[-1])))[
            :, : mono.shape[-1]
        ]

    def separate_file(
        self, path: str | os.PathLike, out_dir: str | os.PathLike, keep_model_rate: bool = False
    ) -> list[Path]:
        """Separate one file into ``out_dir/<stem>_s<k>.wav``; all outputs appear together or none."""
        path, out_dir = Path(path), Path(out_dir)
        waveform, sample_rate = read_audio(path)
        sources = self.separate(waveform, sample_rate, keep_model_rate)
        rate = self.sample_rate if keep_model_rate else sample_rate
        sources = limit_peak(sources, str(path))
        return write_sources_atomic(sources, rate, [out_dir / f"{path.stem}_s{k + 1}.wav" for k in range(len(sources))])


def limit_peak(sources: Tensor, name: str, peak_limit: float = 0.999) -> Tensor:
    """Scale all sources by one factor so that none clips in 16-bit files (relative levels kept)."""
    peak = float(sources.abs().max())
    if peak <= peak_limit:
        return sources
    log.info("%s: scaling all sources by %.3f to avoid clipping", name, peak_limit / peak)
    return sources * (peak_limit / peak)


def write_sources_atomic(sources: Tensor, sample_rate: int, paths: list[Path]) -> list[Path]:
    """Write each source to a temp file first, then rename them all: no partial output set."""
    temps: list[str] = []
    try:
        for source, path in zip(sources, paths, strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".wav")
            os.close(fd)
            temps.append(tmp)
            sf.write(tmp, source.numpy(), sample_rate, subtype="PCM_16")
        for tmp, path in zip(temps, paths, strict=True):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return paths
