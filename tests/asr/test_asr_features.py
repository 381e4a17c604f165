"""Log-mel front end against a float64 librosa pipeline; SpecAugment/SpecCutout masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from asr_helpers import speechlike

from audiosep.nn.features import LogMelFeatures, SpecAugment, SpecCutout, mel_filterbank

librosa = pytest.importorskip("librosa")
signal = pytest.importorskip("scipy.signal")


def reference_features(x: np.ndarray, sr: int) -> np.ndarray:
    """NeMo's recipe in float64 with librosa: pre-emphasis, |STFT|^2, Slaney mel, log, per-feature norm."""
    y = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]]).astype(np.float64)
    win, hop = int(0.02 * sr), int(0.01 * sr)
    window = signal.get_window("hann", win, fftbins=False)  # symmetric, as torch.hann_window(periodic=False)
    spec = librosa.stft(
        y, n_fft=512, hop_length=hop, win_length=win, window=window, center=True, pad_mode="constant"
    )
    mel = librosa.filters.mel(sr=sr, n_fft=512, n_mels=64, norm="slaney", htk=False, dtype=np.float64)
    logmel = np.log(mel @ np.abs(spec) ** 2 + 2.0**-24)
    return (logmel - logmel.mean(1, keepdims=True)) / (logmel.std(1, ddof=1, keepdims=True) + 1e-5)


@pytest.mark.parametrize("sr", [8000, 16000])
def test_filterbank_matches_librosa_slaney(sr):
    ours = mel_filterbank(sr, 512, 64, 0.0, sr / 2).double().numpy()
    theirs = librosa.filters.mel(sr=sr, n_fft=512, n_mels=64, norm="slaney", htk=False, dtype=np.float64)
    np.testing.assert_allclose(ours, theirs, atol=1e-5 * theirs.max())  # float32 precision


@pytest.mark.parametrize("sr", [8000, 16000])
def test_features_match_float64_reference(sr):
    x = speechlike(int(0.37 * sr), sr, seed=1)
    feats, frames = LogMelFeatures(sample_rate=sr).eval()(torch.from_numpy(x)[None])
    expected = reference_features(x, sr)
    assert feats.shape == (1, 64, expected.shape[1]) and frames.item() == expected.shape[1]
    assert frames.item() == len(x) // int(0.01 * sr) + 1
    np.testing.assert_allclose(feats[0].numpy(), expected, atol=2e-4)


def test_padding_does_not_change_valid_frames():
    f = LogMelFeatures().eval()
    short, long = torch.from_numpy(speechlike(3000, 16000, 2)), torch.from_numpy(speechlike(5000, 16000, 3))
    batch = torch.zeros(2, 5000)
    batch[0, :3000], batch[1] = short, long
    feats, frames = f(batch, torch.tensor([3000, 5000]))
    alone, alone_frames = f(short[None])
    assert frames.tolist() == [alone_frames.item(), 5000 // 160 + 1]
    torch.testing.assert_close(feats[0, :, : frames[0]], alone[0], atol=1e-4, rtol=0)
    assert feats[0, :, frames[0] :].abs().max() == 0


def test_dither_only_in_training_and_config_rebuilds():
    f = LogMelFeatures(sample_rate=8000, n_fft=None, dither=1e-2)
    x = torch.from_numpy(speechlike(2000, 8000, 4))[None]
    assert f.n_fft == 256  # next power of two of the 160-sample window
    assert not torch.equal(f.train()(x)[0], f(x)[0])
    rebuilt = LogMelFeatures(**f.config()).eval()
    torch.testing.assert_close(rebuilt(x)[0], f.eval()(x)[0], rtol=0, atol=0)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="hop"):
        LogMelFeatures(window_size=0.005, window_stride=0.01)
    with pytest.raises(ValueError, match="normalize"):
        LogMelFeatures(normalize="all")


def test_front_ends_that_would_make_gigabytes_of_spectrum_per_second_are_refused():
    """A model file's 1-sample hop and 65536-point FFT: 262 KB of spectrum per input sample (reviewer)."""
    from audiosep.nn.features import MAX_VALUES_PER_SAMPLE

    with pytest.raises(ValueError, match="32769 FFT bins and 64 mels every 1 samples"):
        LogMelFeatures(window_size=1 / 16000, window_stride=1 / 16000, n_fft=1 << 16)
    wide = LogMelFeatures(window_size=4096 / 16000, window_stride=128 / 16000, n_fft=4096)  # 16.5 per sample
    assert (wide.n_fft // 2 + 1 + wide.n_mels) / wide.hop_length < MAX_VALUES_PER_SAMPLE


def test_spec_augment_masks_within_lengths_and_widths():
    torch.manual_seed(0)
    feats = torch.randn(8, 64, 200) + 5  # no exact zeros before masking
    lengths = torch.tensor([200, 150, 100, 60, 200, 180, 30, 120])
    feats = feats * (torch.arange(200) < lengths[:, None]).unsqueeze(1)
    aug = SpecAugment(freq_masks=2, freq_width=10, time_masks=2, time_width=20)
    assert torch.equal(aug.eval()(feats, lengths), feats)
    out = aug.train()(feats, lengths, generator=torch.Generator().manual_seed(1))
    newly_zero = (out == 0) & (feats != 0)
    assert newly_zero.any()
    for b, n in enumerate(lengths.tolist()):
        zero_bins = newly_zero[b, :, :n].all(dim=1).sum().item()  # full-time frequency bands
        zero_frames = newly_zero[b, :, :n].all(dim=0).sum().item()  # full-band time bands
        assert zero_bins <= 2 * 10 and zero_frames <= 2 * 20
    assert torch.equal(out[feats == 0], feats[feats == 0])  # padding untouched


def test_spec_augment_fractional_time_width():
    feats = torch.ones(4, 16, 100)
    lengths = torch.tensor([100, 50, 20, 10])
    out = SpecAugment(freq_masks=0, time_masks=1, time_width=0.1).train()(feats, lengths)
    masked_frames = (out == 0).all(dim=1).sum(dim=1)
    assert (masked_frames <= (lengths * 0.1).long()).all()


def test_spec_cutout_rectangles_bounded():
    feats = torch.ones(4, 32, 80)
    lengths = torch.tensor([80, 40, 80, 10])
    out = SpecCutout(rect_masks=1, rect_time=10, rect_freq=5).train()(feats, lengths)
    for b in range(4):
        rows, cols = torch.nonzero(out[b] == 0, as_tuple=True)
        if len(rows):
            assert rows.max() - rows.min() < 5 and cols.max() - cols.min() < 10
            assert cols.max() < lengths[b]
    assert torch.equal(SpecCutout().eval()(feats, lengths), feats)


def test_nemo_frame_count_leaves_the_end_frame_out_of_the_statistics():
    """NeMo 3.0's get_seq_len is ``N // hop`` (the frame centred on the last sample is padding); counting it
    moved every normalised feature by 0.30-0.66 against NeMo (models reviewer). Converted models use NeMo's."""
    from audiosep.convert.nemo import features_from_nemo

    waveform = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3210))).float()
    nemo = LogMelFeatures(frame_count="nemo", dither=0.0).eval()
    raw = LogMelFeatures(normalize="none", dither=0.0).eval()
    features, frames = nemo(waveform)
    assert int(frames) == 3210 // 160 == 20 and features.shape[-1] == 21
    log_mel = raw(waveform)[0][0, :, :20].double()  # float64 reference: NeMo's per-feature normalisation
    mean, std = log_mel.mean(-1, keepdim=True), log_mel.std(-1, keepdim=True)
    torch.testing.assert_close(features[0, :, :20].double(), (log_mel - mean) / (std + 1e-5), atol=1e-4, rtol=0)
    assert torch.equal(features[0, :, 20], torch.zeros(64))
    assert features_from_nemo({}).frame_count == "nemo" and LogMelFeatures().frame_count == "centred"
