"""A small LibriMix-shaped 2-speaker set from built-in synthetic speech, for the demo and the tests.

Layout (the official LibriMix output layout, plus single-speaker speech with transcripts)::

    out_dir/Libri2Mix/wav8k/min/{train-100,dev,test}/{mix_clean,s1,s2}/<utt1>_<utt2>.wav
    out_dir/Libri2Mix/wav8k/min/metadata/mixture_<split>_mix_clean.csv
    out_dir/speech/<split>/<speaker_id>/<utt_id>.wav
    out_dir/manifests/<split>.jsonl         audio_filepath, duration, text, speaker
    out_dir/demo_set.json                   the build parameters; "complete": true once finished

Why so much augmentation: a separator trained on plain eSpeak voices transfers badly to real
speech, so every utterance gets its own prosody jitter, vocal-tract-length/speed perturbation
(resampling), random EQ and tilt, optional band limit and optional synthetic reverb.

The three splits have disjoint speakers and disjoint eSpeak (accent, variant) pairs. Each
utterance is used in about two mixtures. Sources are loudness-normalised (RMS over active frames),
given a relative gain uniform in +-5 dB and a common level, scaled down together when the mixture
or a source would peak above 0.9, quantised to 16 bits, and the mixture is the integer sum of the
quantised sources: ``mix == s1 + s2`` exactly.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from audiosep.data.parallel import imap_unordered
from audiosep.data.prep import synth
from audiosep.data.prep.demo_config import SPLITS, DemoSetConfig
from audiosep.errors import UserError
from audiosep.eval_report import guarded_csv
from audiosep.io import atomic_write_text, directory_lock, read_json

FORMAT_VERSION = 1
TARGET_DBFS = -25.0  # active-speech RMS of every normalised source
RELATIVE_GAIN_DB = 5.0  # s1/s2 level difference is uniform in +-this
PEAK_LIMIT = 0.9  # mixtures and sources are scaled down together to stay below this


@dataclass(frozen=True)
class _SpeakerJob:
    """The utterances of one speaker in one split: synthesised together in one engine batch."""

    split: str
    speaker_id: str
    utterances: tuple[tuple[str, str, synth.Voice], ...]  # (utt_id, text, jittered voice)
    seed: tuple[int, ...]
    sample_rate: int
    speech_dir: str


def _split_speakers(config: DemoSetConfig) -> dict[str, list[tuple[str, synth.Voice]]]:
    """Disjoint (speaker_id, voice) lists per split: 80 % train, 10 % dev, 10 % test."""
    voices = synth.make_speakers(config.num_speakers, seed=config.seed)
    held_out = max(2, round(0.1 * config.num_speakers))
    counts = {"train-100": config.num_speakers - 2 * held_out, "dev": held_out, "test": held_out}
    speakers, start = {}, 0
    for split in SPLITS:
        speakers[split] = [(str(100 + index), voices[index]) for index in range(start, start + counts[split])]
        start += counts[split]
    return speakers


def _plan_jobs(config: DemoSetConfig, out_dir: Path) -> list[_SpeakerJob]:
    """Texts and per-utterance voices of every speaker (about 2 mixtures per utterance)."""
    jobs = []
    for split_index, (split, speakers) in enumerate(_split_speakers(config).items()):
        sentences = synth.SentenceGenerator((config.seed, split_index), config.min_words, config.max_words)
        per_speaker = max(2, -(-config.mixtures(split) // len(speakers)))
        for speaker_index, (speaker_id, voice) in enumerate(speakers):
            rng = np.random.default_rng((config.seed, split_index, speaker_index, 0))
            utterances = tuple(
                (f"{speaker_id}-{k:04d}", sentences.sentence(), synth.jitter_voice(voice, rng))
                for k in range(per_speaker)
            )
            jobs.append(_SpeakerJob(split, speaker_id, utterances, (config.seed, split_index, speaker_index, 1),
                                    config.sample_rate, str(out_dir / "speech" / split / speaker_id)))
    return jobs


def _perturbation_rates(sample_rate: int, max_change: float = 0.1) -> list[int]:
    """Nine resampling targets within +-max_change of sample_rate (multiples of 50 Hz)."""
    factors = np.linspace(1.0 - max_change, 1.0 + max_change, 9)
    return sorted({int(round(sample_rate * f / 50.0)) * 50 for f in factors})


def _random_rir(sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room response: direct path + exponentially decaying noise (RT60 0.15-0.6 s)."""
    rt60 = rng.uniform(0.15, 0.6)
    length = int(min(rt60, 0.5) * sample_rate)
    t = np.arange(length) / sample_rate
    tail = rng.standard_normal(length) * np.exp(-6.9 * t / rt60)  # -60 dB at t = rt60
    direct_to_reverb_db = rng.uniform(0.0, 12.0)
    tail *= 10 ** (-direct_to_reverb_db / 20) / max(float(np.sqrt(np.sum(tail**2))), 1e-9)
    tail[0] = 1.0
    return tail


def _random_eq_gain(freqs: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-phase magnitude response: spectral tilt, 1-3 peaks/notches, sometimes a high- and a low-pass."""
    nyquist = sample_rate / 2
    octaves = np.log2(np.maximum(freqs, 20.0) / 1000.0)  # octaves from 1 kHz
    gain_db = np.clip(rng.uniform(-3.0, 3.0) * octaves, -12.0, 12.0)
    for _ in range(int(rng.integers(1, 4))):
        center = np.log2(np.exp(rng.uniform(np.log(150.0), np.log(0.9 * nyquist))) / 1000.0)
        gain_db += rng.uniform(-9.0, 9.0) * np.exp(-0.5 * ((octaves - center) / rng.uniform(0.3, 1.5)) ** 2)
    gain = 10 ** (gain_db / 20)
    if rng.random() < 0.5:  # 2nd-order Butterworth high-pass magnitude
        gain /= np.sqrt(1 + (rng.uniform(50.0, 250.0) / np.maximum(freqs, 1e-3)) ** 4)
    if rng.random() < 0.3:  # 4th-order Butterworth low-pass magnitude: band-limited channel
        gain /= np.sqrt(1 + (freqs / (rng.uniform(0.55, 0.95) * nyquist)) ** 8)
    gain[0] = 0.0  # no DC
    return gain


def _smooth_at_least(n: int) -> int:
    """The smallest 2,3,5-smooth integer >= n: FFT sizes without large prime factors are fast."""
    best = 1 << max(n - 1, 0).bit_length()
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            candidate = power35 << max(0, (-(-n // power35) - 1).bit_length())  # times the power of 2 needed
            best = min(best, candidate)
            power35 *= 3
        power5 *= 5
    return best


def _perturb_and_colour(wav: np.ndarray, native_rate: int, rate: int, sample_rate: int,
                        rng: np.random.Generator) -> np.ndarray:
    """Resample ``native_rate -> rate`` and label the result ``sample_rate`` (speed and formant shift),
    with random EQ and, 40 % of the time, reverb: all in one FFT pair (band-limited FFT resampling;
    numpy's FFT is 2x faster than torch's here).
    """
    rir = _random_rir(sample_rate, rng) if rng.random() < 0.4 else None
    block_in = native_rate // math.gcd(native_rate, rate)  # n_in : n_out == native_rate : rate exactly
    block_out = rate // math.gcd(native_rate, rate)
    margin = (0 if rir is None else len(rir)) + sample_rate // 20  # room for the reverb tail, no wrap
    blocks = _smooth_at_least(-(-(len(wav) + margin * native_rate // rate + 1) // block_in))
    n_in, n_out = blocks * block_in, blocks * block_out
    bins = n_out // 2 + 1
    spectrum = np.zeros(bins, dtype=np.complex128)
    kept = min(bins, n_in // 2 + 1)  # bins of the band both rates share
    spectrum[:kept] = np.fft.rfft(wav, n=n_in)[:kept]
    freqs = np.arange(bins) * (sample_rate / n_out)  # labelled output frequencies
    taper = 0.5 + 0.5 * np.cos(np.pi * np.clip((np.arange(bins) / max(kept - 1, 1) - 0.92) / 0.08, 0, 1))
    response = _random_eq_gain(freqs, sample_rate, rng) * taper  # anti-alias roll-off over the top 8 %
    if rir is not None:
        response = response * np.fft.rfft(rir, n=n_out)
    out = np.fft.irfft(spectrum * response, n=n_out) * (n_out / n_in)
    return out[: round(len(wav) * rate / native_rate)]


def _active_rms(wav: np.ndarray, sample_rate: int) -> float:
    """RMS over 20 ms frames within 40 dB of the loudest frame (silence does not count)."""
    frame = sample_rate // 50
    energy = np.mean(wav[: len(wav) // frame * frame].reshape(-1, frame) ** 2, axis=1)  # frames
    active = energy[energy >= energy.max() * 1e-4] if energy.size else energy
    return float(np.sqrt(active.mean())) if active.size else 0.0


def _normalise(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """Scale to TARGET_DBFS active RMS, or less where that would push the peak above 0.99 (no clipping)."""
    rms = _active_rms(wav, sample_rate)
    if rms <= 0.0:
        raise RuntimeError("synthesised utterance is silent")
    return wav * min(10 ** (TARGET_DBFS / 20) / rms, 0.99 / float(np.abs(wav).max()))


def _write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM WAV via soundfile, encoded in memory: soundfile's close() fsyncs, 40x slower here."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, subtype="PCM_16", format="WAV")
    path.write_bytes(buffer.getvalue())


def _to_int16(wav: np.ndarray) -> np.ndarray:
    return np.clip(np.round(wav * 32768.0), -32768, 32767).astype(np.int16)


def _run_job(job: _SpeakerJob) -> list[tuple[str, np.ndarray]]:
    """Synthesise, perturb, augment and write one speaker's utterances; returns (utt_id, int16)."""
    rng = np.random.default_rng(job.seed)
    native_rate = synth.native_sample_rate()
    rates = _perturbation_rates(job.sample_rate)
    items = [(text, voice) for _, text, voice in job.utterances]
    waves = synth.synthesize_batch(items, sample_rate=native_rate, seed=int(rng.integers(2**31)))
    results = []
    Path(job.speech_dir).mkdir(parents=True, exist_ok=True)
    for (utt_id, _, _), wav in zip(job.utterances, waves, strict=True):
        rate = rates[int(rng.integers(len(rates)))]
        wav = _perturb_and_colour(wav.double().numpy(), native_rate, rate, job.sample_rate, rng)
        wav = _normalise(wav, job.sample_rate)
        samples = _to_int16(wav)
        _write_wav(Path(job.speech_dir) / f"{utt_id}.wav", samples, job.sample_rate)
        results.append((utt_id, samples))
    return results


def _pair_utterances(utt_ids: list[str], speaker_of: dict[str, str], count: int,
                     rng: np.random.Generator) -> list[tuple[str, str]]:
    """``count`` distinct pairs of utterances by different speakers, each utterance used evenly."""
    order = [utt_ids[i] for i in rng.permutation(len(utt_ids))]
    pairs: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for index in range(100 * count):
        first = order[index % len(order)]
        second = utt_ids[int(rng.integers(len(utt_ids)))]
        key = (first, second) if first < second else (second, first)
        if speaker_of[first] == speaker_of[second] or key in seen:
            continue
        seen.add(key)
        pairs.append((first, second))
        if len(pairs) == count:
            return pairs
    raise UserError(f"cannot form {count} distinct mixtures from {len(utt_ids)} utterances: use more speakers")


def _mix(first: np.ndarray, second: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """The "min" mode mixture of two normalised int16 utterances: (s1, s2, mix) int16, mix == s1 + s2."""
    length = min(len(first), len(second))
    gain_db = rng.uniform(-RELATIVE_GAIN_DB, RELATIVE_GAIN_DB)  # level of s1 relative to s2
    level_db = rng.uniform(-6.0, 3.0)  # common level, for input-level diversity
    s1 = first[:length] / 32768.0 * 10 ** ((level_db + gain_db / 2) / 20)
    s2 = second[:length] / 32768.0 * 10 ** ((level_db - gain_db / 2) / 20)
    peak = max(np.abs(s1 + s2).max(), np.abs(s1).max(), np.abs(s2).max())
    if peak > PEAK_LIMIT:
        s1, s2 = s1 * (PEAK_LIMIT / peak), s2 * (PEAK_LIMIT / peak)
    q1 = np.round(s1 * 32768.0).astype(np.int32)
    q2 = np.round(s2 * 32768.0).astype(np.int32)
    return q1.astype(np.int16), q2.astype(np.int16), (q1 + q2).astype(np.int16)  # |q1 + q2| <= 0.9 * 2^15 + 1


def _write_split(split: str, config: DemoSetConfig, librimix_dir: Path, audio: dict[str, np.ndarray],
                 speaker_of: dict[str, str], progress: tqdm) -> None:
    """Mixtures of one split: wav files and the official metadata CSV."""
    rng = np.random.default_rng((config.seed, SPLITS.index(split), 1_000_000))
    utt_ids = sorted(speaker_of)
    rows = []
    for first, second in _pair_utterances(utt_ids, speaker_of, config.mixtures(split), rng):
        mixture_id = f"{first}_{second}"
        paths = [librimix_dir / split / folder / f"{mixture_id}.wav" for folder in ("mix_clean", "s1", "s2")]
        s1, s2, mix = _mix(audio[first], audio[second], rng)
        for path, samples in zip(paths, (mix, s1, s2), strict=True):
            _write_wav(path, samples, config.sample_rate)
        rows.append(dict(zip(METADATA_COLUMNS, [mixture_id, *(str(path) for path in paths), len(mix)], strict=True)))
        progress.update(1)
    # atomic: a killed build never leaves a metadata file listing half the mixtures; the cells are kept as they are
    # (the file is read back by the loader, not a spreadsheet; the ids are our own "speaker-utterance" names)
    text = guarded_csv(rows, METADATA_COLUMNS, cell=lambda value: value, lineterminator="\n")
    atomic_write_text(librimix_dir / "metadata" / f"mixture_{split}_mix_clean.csv", text)


METADATA_COLUMNS = ("mixture_ID", "mixture_path", "source_1_path", "source_2_path", "length")


def _write_manifests(out_dir: Path, jobs: list[_SpeakerJob], audio: dict[str, np.ndarray], sample_rate: int) -> None:
    (out_dir / "manifests").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        lines = [
            json.dumps({"audio_filepath": str(Path(job.speech_dir) / f"{utt_id}.wav"),
                        "duration": len(audio[utt_id]) / sample_rate, "text": text, "speaker": job.speaker_id})
            for job in jobs if job.split == split for utt_id, text, _ in job.utterances
        ]
        (out_dir / "manifests" / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _synthesise_all(jobs: list[_SpeakerJob], num_workers: int, progress: tqdm) -> dict[str, np.ndarray]:
    """Run every speaker job (in worker processes when num_workers > 0); results do not depend on it."""
    audio: dict[str, np.ndarray] = {}
    results: Iterator[list[tuple[str, np.ndarray]]] = map(_run_job, jobs)
    if num_workers > 0:
        synth.native_sample_rate()  # load the engine here: forked workers share its library copy
        results = imap_unordered(_run_job, jobs, num_workers, chunk=1)  # a job: one speaker's utterances
    for result in results:
        audio.update(result)
        progress.update(len(result))
    return audio


def _read_marker(marker: Path) -> dict:
    """The record in ``demo_set.json``; ``{}`` (an unfinished set: rebuild) when it is damaged (torn by
    a killed run, or otherwise not UTF-8 JSON holding an object)."""
    stored = read_json(marker)
    return stored if isinstance(stored, dict) else {}


def _wav_has_length(path: Path, frames: int, sample_rate: int) -> bool:
    """Whether ``path`` is a mono wav of ``frames`` samples at ``sample_rate`` (its header only: fast)."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):
        return False
    return (info.frames, info.samplerate, info.channels) == (frames, sample_rate, 1)


def _split_is_intact(out_dir: Path, config: DemoSetConfig, split: str) -> bool:
    """Whether every wav that ``split``'s metadata CSV and manifest list is there with its recorded length."""
    rate = config.sample_rate
    metadata = out_dir / "Libri2Mix" / f"wav{rate // 1000}k" / "min" / "metadata"
    with (metadata / f"mixture_{split}_mix_clean.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if len(rows) != config.mixtures(split):
        return False
    for row in rows:
        if not all(_wav_has_length(Path(row[key]), int(row["length"]), rate)
                   for key in ("mixture_path", "source_1_path", "source_2_path")):
            return False
    lines = (out_dir / "manifests" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    return bool(records) and all(
        _wav_has_length(Path(r["audio_filepath"]), round(r["duration"] * rate), rate) for r in records)


def _set_is_intact(out_dir: Path, config: DemoSetConfig) -> bool:
    """Whether the files of a set marked complete are all still there, whole (else it is rebuilt: a deleted
    or truncated wav, or a deleted manifest, said "ready" and failed later inside training)."""
    try:
        return all(_split_is_intact(out_dir, config, split) for split in SPLITS)
    except (OSError, ValueError, KeyError, TypeError, csv.Error):  # a damaged CSV or manifest
        return False


def _prepare_out_dir(out_dir: Path, config: DemoSetConfig) -> bool:
    """True when out_dir already holds a complete set built with ``config`` whose listed files are all
    intact; else empties our folders (partial files of a run that did not finish, or a damaged set).

    Why nothing else is ever deleted: ``Libri2Mix`` may also hold a LibriMix that ``audiosep data
    librimix`` generated there, and a rerun with other settings removed it whole (reviewer).

    Raises:
        UserError: out_dir holds a demo set of other settings, or LibriMix/speech folders this builder
            did not write.
    """
    marker = out_dir / "demo_set.json"
    ours = ("Libri2Mix", "speech", "manifests")
    if marker.is_file():
        stored = _read_marker(marker)
        if stored.get("config") != asdict(config) or stored.get("format_version") != FORMAT_VERSION:
            raise UserError(f"{out_dir}: holds a demo set of other settings (or data written by something else); "
                            "choose another folder, or delete it first")  # fmt: skip
        if stored.get("complete") and _set_is_intact(out_dir, config):
            return True
        for name in ours:
            shutil.rmtree(out_dir / name, ignore_errors=True)
    elif any((out_dir / name).exists() for name in ours):
        raise UserError(f"{out_dir}: holds {', '.join(ours)} data not written by `audiosep data demo`; "
                        "choose an empty or new folder")
    return False


def _write_marker(out_dir: Path, config: DemoSetConfig, complete: bool) -> None:
    record = {"format_version": FORMAT_VERSION, "complete": complete, "config": asdict(config)}
    atomic_write_text(out_dir / "demo_set.json", json.dumps(record, indent=2) + "\n")


def build_demo_set(out_dir: str | os.PathLike, seed: int = 0, num_train: int = 2000, num_dev: int = 150,
                   num_test: int = 100, sample_rate: int = 8000, num_speakers: int = 250,
                   num_workers: int | None = None, progress: bool = True) -> Path:
    """Write a LibriMix-shaped 2-speaker set of synthetic speech (layout in the module docstring).

    Deterministic: the same arguments give the same bytes, whatever ``num_workers``. A folder that
    already holds a complete set with the same parameters is returned as it is.

    Args:
        out_dir: folder to write into (created; LibriMixDataModule accepts it as ``root``).
        seed: random seed of everything (speakers, texts, augmentation, mixing).
        num_train / num_dev / num_test: mixtures per split (``train-100``, ``dev``, ``test``).
        sample_rate: output rate in Hz (the folder is ``wav{sample_rate // 1000}k``).
        num_speakers: speakers in all; 10 % go to dev, 10 % to test (at least 2 each), disjoint.
        num_workers: worker processes for synthesis (default: CPU count, at most 4; 0 = in process).
        progress: show a tqdm bar.

    Returns:
        ``out_dir`` as a resolved Path.

    Raises:
        UserError: invalid sizes, or out_dir holds data this builder did not write.
    """
    config = DemoSetConfig(seed, num_train, num_dev, num_test, sample_rate, num_speakers)
    config.validate()
    out_dir = Path(out_dir).expanduser().resolve()
    with directory_lock(out_dir, "--out"):  # two builds into one folder crashed one or mixed their files
        if not _prepare_out_dir(out_dir, config):
            _build(out_dir, config, num_workers, progress)
    return out_dir


def _build(out_dir: Path, config: DemoSetConfig, num_workers: int | None, progress: bool) -> None:
    """Synthesise, mix and write every file of a demo set into an emptied ``out_dir`` (then mark it complete)."""
    sample_rate = config.sample_rate
    _write_marker(out_dir, config, complete=False)
    jobs = _plan_jobs(config, out_dir)
    librimix_dir = out_dir / "Libri2Mix" / f"wav{sample_rate // 1000}k" / "min"
    for split in SPLITS:
        for folder in ("mix_clean", "s1", "s2"):
            (librimix_dir / split / folder).mkdir(parents=True, exist_ok=True)
    (librimix_dir / "metadata").mkdir(parents=True, exist_ok=True)
    total = sum(len(job.utterances) for job in jobs) + sum(config.mixtures(split) for split in SPLITS)
    workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
    with tqdm(total=total, desc="demo set", unit="file", disable=None if progress else True) as bar:  # None: a terminal only
        audio = _synthesise_all(jobs, workers, bar)
        for split in SPLITS:
            speaker_of = {utt_id: job.speaker_id for job in jobs if job.split == split
                          for utt_id, _, _ in job.utterances}
            _write_split(split, config, librimix_dir, audio, speaker_of, bar)
    _write_manifests(out_dir, jobs, audio, sample_rate)
    _write_marker(out_dir, config, complete=True)
