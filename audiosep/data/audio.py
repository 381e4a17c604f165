"""Audio I/O: soundfile for reading/writing, torchaudio for resampling.

Reads wav/flac/ogg (and mp3 where libsndfile supports it) as ``float32 [C, T]``; writes through
:mod:`audiosep.io` so outputs appear whole or not at all.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
import torchaudio.transforms as T
from torch import Tensor

from audiosep.errors import UserError
from audiosep.io import atomic_write


def read_audio(path: str | os.PathLike) -> tuple[Tensor, int]:
    """Read ``path`` as ``(float32 Tensor[C, T], sample_rate)``.

    Raises:
        UserError: the file is missing, unreadable or empty; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)  # [T, C]
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise UserError(f"{path}: cannot read audio ({err})") from err
    if data.shape[0] == 0:
        raise UserError(f"{path}: the file holds no audio samples")
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(sample_rate)


def to_mono(waveform: Tensor) -> Tensor:
    """Average the channels of ``[C, T]`` (or pass ``[T]`` through) into ``[T]``."""
    if waveform.dim() == 1:
        return waveform
    if waveform.dim() != 2:
        raise ValueError(f"expected [C, T] or [T] audio, got shape {tuple(waveform.shape)}")
    return waveform.mean(dim=0)


MAX_RESAMPLE_KERNEL_BYTES = 64 << 20  # torchaudio's filter for rates with a small gcd can take gigabytes


@functools.lru_cache(maxsize=8)
def _resampler(orig_rate: int, new_rate: int) -> T.Resample:
    """torchaudio's resampler with its filter built once per rate pair (a long file is resampled span by span)."""
    gcd = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // gcd, new_rate // gcd
    width = math.ceil(6 * orig / (0.99 * min(orig, new)))
    kernel_bytes = 4 * new * (2 * width + orig)
    if kernel_bytes > MAX_RESAMPLE_KERNEL_BYTES:
        raise UserError(
            f"resampling {orig_rate} Hz -> {new_rate} Hz needs a {kernel_bytes >> 20} MiB filter (the rates share "
            f"a factor of only {gcd}); convert the file to a common rate first (e.g. sox or ffmpeg)"
        )
    return T.Resample(orig_rate, new_rate)


def resample(waveform: Tensor, orig_rate: int, new_rate: int) -> Tensor:
    """Band-limited sinc resampling along the last dim (torchaudio); a no-op for equal rates.

    Raises:
        UserError: the rates share so small a factor that the filter would be huge (e.g. 44101 Hz).
    """
    if orig_rate == new_rate:
        return waveform
    resampler = _resampler(int(orig_rate), int(new_rate))
    if waveform.dtype != torch.float32 or waveform.device.type != "cpu":
        return AF.resample(waveform, orig_rate, new_rate)
    return resampler(waveform)


def write_audio_atomic(
    path: str | os.PathLike, audio: Tensor | np.ndarray, sample_rate: int, subtype: str | None = None
) -> None:
    """Write ``[T]`` or ``[C, T]`` audio to ``path`` atomically (:func:`audiosep.io.atomic_write`).

    The samples keep their own dtype (float64 input is quantised from float64, as reference
    generators do). The format follows the suffix (``.wav``, ``.flac``, ``.ogg``); ``subtype``
    defaults to soundfile's default for the format (16-bit PCM for wav/flac).
    """
    path = Path(path)
    audio_format = path.suffix.lstrip(".").upper()
    if audio_format not in sf.available_formats():
        raise UserError(f"{path}: cannot tell an audio format from the suffix {path.suffix!r}")
    data = audio.detach().cpu().numpy() if isinstance(audio, Tensor) else np.asarray(audio)
    data = data[None] if data.ndim == 1 else data  # C, T
    atomic_write(path, lambda tmp: sf.write(tmp, data.T, sample_rate, subtype=subtype, format=audio_format))
