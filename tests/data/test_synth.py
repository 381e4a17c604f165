"""Built-in eSpeak NG speech: determinism, rates, voices, speakers and sentences."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from audiosep.data.prep import synth
from audiosep.data.prep.synth import (
    SentenceGenerator,
    Voice,
    jitter_voice,
    make_speakers,
    synthesize,
    synthesize_batch,
)

TEXT = "we were away a year ago"


def _active_rms(wav: torch.Tensor) -> float:
    return float(wav[wav.abs() > 0.01].double().pow(2).mean().sqrt())


@pytest.mark.parametrize("sample_rate", [8000, 16000])
def test_synthesis_is_deterministic_non_silent_and_resampled(sample_rate: int) -> None:
    voice = Voice("en-us+m3", pitch=40, pitch_range=60, rate=180)
    first = synthesize(TEXT, voice, sample_rate=sample_rate)
    second = synthesize(TEXT, voice, sample_rate=sample_rate)
    native = synthesize(TEXT, voice, sample_rate=synth.native_sample_rate())
    assert first.dtype == torch.float32 and first.dim() == 1
    assert torch.equal(first, second)
    # torchaudio's sinc resampler returns ceil(new_rate * length / orig_rate) samples
    assert first.numel() == math.ceil(sample_rate * native.numel() / synth.native_sample_rate())
    assert 0.5 < first.numel() / sample_rate < 5.0
    assert first.abs().max() <= 1.0 and _active_rms(first) > 0.02


def test_engine_state_does_not_leak_between_calls() -> None:
    # eSpeak keeps flutter phase and gain state in statics: without the reload these would differ.
    voice = Voice("en+f2")
    reference = synthesize(TEXT, voice)
    synthesize("a completely different and much longer sentence to move the internal state", voice)
    assert torch.equal(synthesize(TEXT, voice), reference)
    batch = synthesize_batch([(TEXT, voice), ("another sentence", voice)])
    assert torch.equal(batch[0], reference)


def test_different_seeds_or_voices_change_the_audio() -> None:
    base = synthesize(TEXT, Voice("en-us+m3"))
    assert not torch.equal(base, synthesize(TEXT, Voice("en-gb-x-rp+m3")))
    assert not torch.equal(base, synthesize(TEXT, Voice("en-us+m3", rate=140)))


def _median_f0(wav: torch.Tensor, sample_rate: int) -> float:
    librosa = pytest.importorskip("librosa")
    signal = wav.double().numpy()
    f0 = librosa.yin(signal, fmin=50, fmax=600, sr=sample_rate, frame_length=1024, hop_length=256)
    energy = librosa.feature.rms(y=signal, frame_length=1024, hop_length=256)[0][: len(f0)]
    return float(np.median(f0[energy > 0.3 * energy.max()]))


def test_pitch_parameter_moves_the_fundamental() -> None:
    # eSpeak scales the voice's base pitch by 2 ** ((pitch - 50) / 50) and adds a pitch-independent
    # offset, so pitch 20 -> 80 multiplies f0 by more than 1.5 and less than 2 ** 1.2.
    f0 = [_median_f0(synthesize(TEXT, Voice("en-us+m3", pitch=p, pitch_range=0), 16000), 16000) for p in (20, 50, 80)]
    assert f0[0] < f0[1] < f0[2]
    assert 1.5 < f0[2] / f0[0] < 2 ** 1.2
    female = _median_f0(synthesize(TEXT, Voice("en+f2", pitch=50, pitch_range=0), 16000), 16000)
    assert female > 1.4 * f0[1]


def test_make_speakers_is_deterministic_distinct_and_in_range() -> None:
    speakers = make_speakers(40, seed=3)
    assert speakers == make_speakers(40, seed=3)
    assert speakers != make_speakers(40, seed=4)
    assert len({voice.name for voice in speakers}) == 40
    accents = {voice.name.split("+")[0] for voice in make_speakers(200, seed=0)}
    assert accents == set(synth.ENGLISH_ACCENTS)
    for voice in speakers:
        assert voice.name.split("+")[1] in synth.available_variants()
        assert 20 <= voice.pitch <= 90 and 20 <= voice.pitch_range <= 100 and 120 <= voice.rate <= 220
    total_pairs = len(synth.ENGLISH_ACCENTS) * len(synth.available_variants())
    assert len(make_speakers(total_pairs + 5, seed=0)) == total_pairs + 5
    for voice in speakers[:3]:  # every drawn voice must exist in the shipped data
        assert synthesize("hello there", voice).numel() > 0


def test_jitter_keeps_the_voice_and_stays_in_bounds() -> None:
    rng = np.random.default_rng(0)
    voice = Voice("en+m1", pitch=95, pitch_range=3, rate=200)
    jittered = [jitter_voice(voice, rng) for _ in range(50)]
    assert all(v.name == voice.name and 0 <= v.pitch <= 99 and 0 <= v.pitch_range <= 100 for v in jittered)
    assert all(180 <= v.rate <= 220 for v in jittered)
    assert len({(v.pitch, v.rate) for v in jittered}) > 10


def test_invalid_input_raises() -> None:
    with pytest.raises(ValueError, match="pitch"):
        Voice("en", pitch=120)
    with pytest.raises(ValueError, match="no-such-voice"):
        synthesize(TEXT, Voice("no-such-voice"))
    with pytest.raises(ValueError, match="empty"):
        synthesize("  ", Voice("en"))
    with pytest.raises(ValueError, match="speakers"):
        make_speakers(0, seed=0)


def test_sentence_generator_is_deterministic_varied_and_clean() -> None:
    sentences = SentenceGenerator(seed=7).sentences(300)
    assert sentences == SentenceGenerator(seed=7).sentences(300)
    assert sentences != SentenceGenerator(seed=8).sentences(300)
    lengths = [len(s.split()) for s in sentences]
    assert min(lengths) >= 4 and max(lengths) <= 14 and len(set(lengths)) >= 8
    assert all(re.fullmatch(r"[a-z]+( [a-z]+)*", s) for s in sentences)
    assert len(set(sentences)) == len(sentences)
    vocabulary = {word for s in SentenceGenerator(seed=0, min_words=8, max_words=16).sentences(2000) for word in s.split()}
    assert len(vocabulary) > 300
    long_ones = SentenceGenerator(seed=0, min_words=10, max_words=12).sentences(50)
    assert all(10 <= len(s.split()) <= 12 for s in long_ones)
