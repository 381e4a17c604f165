"""ASR front end as modules: NeMo-compatible log-mel features, SpecAugment and SpecCutout.

Why modules: the front end runs on the same device as the model (no feature files), it is
exported with it, and its settings travel in the checkpoint so that inference rebuilds it exactly.
:class:`LogMelFeatures` follows NeMo's ``AudioToMelSpectrogramPreprocessor`` (pre-emphasis, STFT
with a symmetric Hann window, power spectrum, Slaney mel filters, ``log(x + 2**-24)``, per-feature
normalisation over the valid frames), with one difference: the pre-emphasised signal is zeroed past
each utterance's length, so zero padding in a batch never changes the features of the valid frames.
"""

from __future__ import annotations

from typing import Any

import torch
import torchaudio.functional as AF
from torch import Tensor, nn

NORMALIZE_MODES: tuple[str, ...] = ("per_feature", "none")
STD_FLOOR = 1e-5  # NeMo's CONSTANT, added to the standard deviation


def length_mask(lengths: Tensor, max_len: int) -> Tensor:
    """``[B, max_len]`` bool mask, True at frames ``t < lengths[b]``."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> Tensor:
    """``[n_mels, n_fft // 2 + 1]`` Slaney-scale, Slaney-normalised triangles (librosa's default)."""
    fbanks = AF.melscale_fbanks(
        n_fft // 2 + 1, f_min, f_max, n_mels, sample_rate, norm="slaney", mel_scale="slaney"
    )  # [n_freqs, n_mels]
    return fbanks.T.contiguous()


def normalize_per_feature(features: Tensor, lengths: Tensor) -> Tensor:
    """Zero mean, unit std (unbiased, + 1e-5) per utterance and mel bin over the valid frames."""
    mask = length_mask(lengths, features.shape[-1]).unsqueeze(1).to(features.dtype)  # [B, 1, T]
    count = lengths.to(features.dtype).clamp_min(1).view(-1, 1, 1)
    mean = (features * mask).sum(dim=-1, keepdim=True) / count  # [B, F, 1]
    var = ((features - mean) * mask).pow(2).sum(dim=-1, keepdim=True) / (count - 1).clamp_min(1)
    return (features - mean) / (var.sqrt() + STD_FLOOR)


FRAME_COUNTS = ("centred", "nemo")
# Spectrum and mel values per input sample, ``(n_fft // 2 + 1 + n_mels) / hop``: 2 for QuartzNet's front end
# (512-point FFT, 64 mels, 160-sample hop), 16.5 for a 4096-point FFT every 128 samples. A model file's
# 1-sample hop with a 65536-point FFT was 32 769 (262 KB of spectrum a sample: 167 GB for 20 s; reviewer).
MAX_VALUES_PER_SAMPLE = 64


class LogMelFeatures(nn.Module):
    """Waveforms ``[B, N]`` -> normalised log-mel features ``[B, n_mels, T]`` and frame counts ``[B]``.

    Args:
        sample_rate: input rate in Hz (audio at another rate must be resampled first).
        n_mels: number of mel bins (QuartzNet: 64).
        window_size: analysis window in seconds (20 ms).
        window_stride: hop in seconds (10 ms); ``T = N // hop + 1``.
        n_fft: FFT size (512); ``None`` takes the next power of two of the window length.
        preemphasis: ``y[n] = x[n] - a x[n-1]`` coefficient; 0 disables it.
        dither: std of the white noise added in training mode only (eval stays deterministic).
        normalize: ``"per_feature"`` (NeMo) or ``"none"``.
        f_min, f_max: mel range in Hz; ``f_max=None`` is Nyquist.
        log_guard: added before the log (NeMo: ``2**-24``).
        pad_mode: STFT centre padding, ``"constant"`` (NeMo >= 1.20, padding-invariant) or ``"reflect"``.
        frame_count: valid frames, ``"centred"`` (``N // hop + 1``: every centred STFT frame) or ``"nemo"``
            (``N // hop``, NeMo 3.0's ``get_seq_len``: the frame centred on the last sample is padding, left
            out of the normalisation; 0.3-0.66 off on every frame otherwise). Converted NeMo models use it.

    Raises:
        ValueError: a window shorter than the hop, an FFT shorter than the window, more than
            :data:`MAX_VALUES_PER_SAMPLE` spectrum and mel values per input sample, an unknown mode.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 64,
        window_size: float = 0.02,
        window_stride: float = 0.01,
        n_fft: int | None = 512,
        preemphasis: float = 0.97,
        dither: float = 1e-5,
        normalize: str = "per_feature",
        f_min: float = 0.0,
        f_max: float | None = None,
        log_guard: float = 2.0**-24,
        pad_mode: str = "constant",
        frame_count: str = "centred",
    ) -> None:
        super().__init__()
        win_length = round(window_size * sample_rate)
        hop_length = round(window_stride * sample_rate)
        n_fft = n_fft or 1 << (win_length - 1).bit_length()
        if not 0 < hop_length <= win_length <= n_fft:
            raise ValueError(
                f"need 0 < hop ({hop_length}) <= window ({win_length}) <= n_fft ({n_fft}) samples"
            )
        per_sample = (n_fft // 2 + 1 + n_mels) / hop_length
        if per_sample > MAX_VALUES_PER_SAMPLE:
            raise ValueError(
                f"{n_fft // 2 + 1} FFT bins and {n_mels} mels every {hop_length} samples: {per_sample:.3g} values per "
                f"input sample, more than {MAX_VALUES_PER_SAMPLE} (a longer hop, or a smaller n_fft or n_mels)"
            )
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"unknown normalize {normalize!r}; valid: {', '.join(NORMALIZE_MODES)}")
        if pad_mode not in ("constant", "reflect"):
            raise ValueError(f"unknown pad_mode {pad_mode!r}; valid: constant, reflect")
        if frame_count not in FRAME_COUNTS:
            raise ValueError(f"unknown frame_count {frame_count!r}; valid: {', '.join(FRAME_COUNTS)}")
        self._config = {
            "sample_rate": sample_rate, "n_mels": n_mels, "window_size": window_size,
            "window_stride": window_stride, "n_fft": n_fft, "preemphasis": preemphasis, "dither": dither,
            "normalize": normalize, "f_min": f_min, "f_max": f_max, "log_guard": log_guard,
            "pad_mode": pad_mode, "frame_count": frame_count,
        }  # fmt: skip
        self.sample_rate = sample_rate
        self.n_mels = n_mels
        self.win_length, self.hop_length, self.n_fft = win_length, hop_length, n_fft
        self.preemphasis, self.dither, self.normalize = preemphasis, dither, normalize
        self.log_guard, self.pad_mode, self.frame_count = log_guard, pad_mode, frame_count
        fmax = sample_rate / 2 if f_max is None else f_max
        self.register_buffer("window", torch.hann_window(win_length, periodic=False), persistent=False)
        self.register_buffer(
            "filterbank", mel_filterbank(sample_rate, n_fft, n_mels, f_min, fmax), persistent=False
        )

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-like): ``LogMelFeatures(**f.config())`` rebuilds ``f``."""
        return dict(self._config)

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        """Number of valid frames for ``lengths`` samples (``N // hop + 1``, or ``N // hop`` for ``"nemo"``)."""
        return torch.div(lengths, self.hop_length, rounding_mode="floor") + int(self.frame_count == "centred")

    def forward(self, waveform: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Compute features in float32 (autocast off); frames past ``frame_lengths`` are zero.

        Args:
            waveform: ``[B, N]`` zero-padded audio at :attr:`sample_rate`.
            lengths: ``[B]`` valid samples per row (default: all ``N``).

        Returns:
            ``(features [B, n_mels, T], frame_lengths [B])``.
        """
        if waveform.dim() != 2:
            raise ValueError(f"expected waveform [B, N], got shape {tuple(waveform.shape)}")
        batch, num_samples = waveform.shape
        if lengths is None:
            lengths = torch.full((batch,), num_samples, dtype=torch.long, device=waveform.device)
        with torch.autocast(waveform.device.type, enabled=False):
            return self._features(waveform.float(), lengths.long())

    def _features(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        sample_mask = length_mask(lengths, x.shape[-1])  # [B, N]
        if self.training and self.dither > 0:
            x = x + self.dither * torch.randn_like(x)
        if self.preemphasis:
            x = torch.cat([x[:, :1], x[:, 1:] - self.preemphasis * x[:, :-1]], dim=1)
        x = x * sample_mask  # padding stays exactly zero, as if the utterance were alone
        spec = torch.stft(
            x, self.n_fft, self.hop_length, self.win_length, self.window,
            center=True, pad_mode=self.pad_mode, return_complex=True,
        )  # fmt: skip  # [B, n_fft // 2 + 1, T]
        power = spec.real.pow(2) + spec.imag.pow(2)
        features = torch.log(torch.matmul(self.filterbank, power) + self.log_guard)  # [B, F, T]
        frames = self.frame_lengths(lengths)
        if self.normalize == "per_feature":
            features = normalize_per_feature(features, frames)
        frame_mask = length_mask(frames, features.shape[-1]).unsqueeze(1)  # [B, 1, T]
        return features.masked_fill(~frame_mask, 0.0), frames


def front_end_bytes_per_sample(features: LogMelFeatures) -> float:
    """Bytes the front end holds per input sample at its peak, an upper estimate from its sizes (the STFT has no
    meta kernel): the complex spectrum (8 B a bin) and its power (4 B), the mels and their log (4 B each), and
    three float32 copies of the waveform (padding, pre-emphasis)."""
    bins = features.n_fft // 2 + 1
    return (12 * bins + 8 * features.n_mels) / features.hop_length + 12


def _random_starts(limit: Tensor, width: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform integer starts in ``[0, limit - width]`` (clamped at 0), one per row."""
    span = (limit - width).clamp_min(0) + 1
    uniform = torch.rand(limit.shape, generator=generator).to(limit.device)  # CPU generator
    return (uniform * span).long()


def _band_mask(starts: Tensor, widths: Tensor, size: int) -> Tensor:
    """``[B, size]`` bool, True on ``starts[b] <= i < starts[b] + widths[b]``."""
    index = torch.arange(size, device=starts.device).unsqueeze(0)
    return (index >= starts.unsqueeze(1)) & (index < (starts + widths).unsqueeze(1))


class SpecAugment(nn.Module):
    """SpecAugment (Park et al. 2019): frequency and time bands set to ``mask_value``, training only.

    Time masks fall inside each utterance's valid frames, so padding stays untouched.

    Args:
        freq_masks: number of frequency bands per utterance.
        freq_width: maximum band width in mel bins.
        time_masks: number of time bands per utterance.
        time_width: maximum band width in frames (int) or as a fraction of the utterance (float < 1).
        mask_value: value written into the bands (0 = the normalised mean).
    """

    def __init__(
        self,
        freq_masks: int = 2,
        freq_width: int = 15,
        time_masks: int = 2,
        time_width: int | float = 25,
        mask_value: float = 0.0,
    ) -> None:
        super().__init__()
        if min(freq_masks, freq_width, time_masks, time_width) < 0:
            raise ValueError("mask counts and widths must be >= 0")
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width
        self.mask_value = mask_value

    def forward(self, features: Tensor, lengths: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Mask ``features [B, F, T]`` (returns a new tensor; identity in eval mode)."""
        if not self.training:
            return features
        batch, num_bins, num_frames = features.shape
        device = features.device
        masked = torch.zeros(batch, num_bins, num_frames, dtype=torch.bool, device=device)
        bins = torch.full((batch,), num_bins, device=device)
        for _ in range(self.freq_masks):
            widths = torch.randint(0, self.freq_width + 1, (batch,), generator=generator).to(device)
            starts = _random_starts(bins, widths, generator)
            masked |= _band_mask(starts, widths, num_bins).unsqueeze(2)
        max_widths = self._time_widths(lengths)
        for _ in range(self.time_masks):
            widths = (torch.rand(batch, generator=generator).to(device) * (max_widths + 1)).long()
            starts = _random_starts(lengths, widths, generator)
            masked |= (_band_mask(starts, widths, num_frames) & length_mask(lengths, num_frames)).unsqueeze(1)
        return features.masked_fill(masked, self.mask_value)

    def _time_widths(self, lengths: Tensor) -> Tensor:
        if isinstance(self.time_width, float) and self.time_width < 1:
            return (lengths.float() * self.time_width).long()
        return torch.full_like(lengths, int(self.time_width))


class SpecCutout(nn.Module):
    """SpecCutout (DeVries & Taylor 2017, as in QuartzNet): rectangles set to zero, training only.

    Args:
        rect_masks: rectangles per utterance.
        rect_time: maximum rectangle width in frames.
        rect_freq: maximum rectangle height in mel bins.
    """

    def __init__(self, rect_masks: int = 5, rect_time: int = 120, rect_freq: int = 50) -> None:
        super().__init__()
        if min(rect_masks, rect_time, rect_freq) < 0:
            raise ValueError("rect_masks, rect_time and rect_freq must be >= 0")
        self.rect_masks, self.rect_time, self.rect_freq = rect_masks, rect_time, rect_freq

    def forward(self, features: Tensor, lengths: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Cut rectangles out of ``features [B, F, T]`` inside the valid frames; identity in eval mode."""
        if not self.training:
            return features
        batch, num_bins, num_frames = features.shape
        device = features.device
        masked = torch.zeros(batch, num_bins, num_frames, dtype=torch.bool, device=device)
        bins = torch.full((batch,), num_bins, device=device)
        valid = length_mask(lengths, num_frames)
        for _ in range(self.rect_masks):
            heights = torch.randint(0, self.rect_freq + 1, (batch,), generator=generator).to(device)
            widths = torch.randint(0, self.rect_time + 1, (batch,), generator=generator).to(device)
            freq_band = _band_mask(_random_starts(bins, heights, generator), heights, num_bins)
            time_band = _band_mask(_random_starts(lengths, widths, generator), widths, num_frames) & valid
            masked |= freq_band.unsqueeze(2) & time_band.unsqueeze(1)
        return features.masked_fill(masked, 0.0)
