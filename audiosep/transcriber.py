"""Speech recognition of audio files: ``Transcriber`` = front end + acoustic model + CTC decoder.

Files of any sample rate and channel count are mixed down to mono and resampled to the model's
rate (both logged). Utterances are batched by length; the model masks padding, so a file gets the
same transcript alone or in a batch. Files longer than ``segment_seconds`` are cut at their quietest
moments (between words, where the energy is lowest) into segments read and resampled span by span,
so an hour-long recording is transcribed in bounded memory; the segments' transcripts are joined
with spaces.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from audiosep.audio_blocks import (
    BLOCK_FRAMES,
    MAX_SAMPLE,
    AudioError,
    CheckedAudio,
    check_sample_rate,
    check_sample_values,
    kind_of,
    mono_waveform,
    resample_span,
    resampled,
    resampled_length,
)
from audiosep.checkpoint import CheckpointError, build_untrusted, load_model
from audiosep.data.audio import to_mono
from audiosep.data.tokenizer import CharTokenizer
from audiosep.decoding import Decoder, build_decoder, single_spaces
from audiosep.errors import UserError
from audiosep.models.quartznet import QuartzNet
from audiosep.nn.features import LogMelFeatures, front_end_bytes_per_sample

log = logging.getLogger(__name__)
TRANSCRIBE_ONE_CHANNEL = ("the transcript will be of near silence: transcribe one channel (waveform[N] in Python; "
                          "a one-channel copy of the file, e.g. sox in.wav out.wav remix 1)")

SEGMENT_SECONDS = 30.0  # longer files are cut into segments of at most this
CUT_SEARCH_SECONDS = 5.0  # each cut is at the quietest frame of the last this-many seconds of a segment
ENERGY_FRAME_SECONDS = 0.02


class NonFiniteOutputError(UserError, ValueError):
    """The acoustic model produced NaN or infinite log-probabilities: there is no transcript to give."""


def check_finite(log_probs: Sequence[Tensor]) -> None:
    """Raise :class:`NonFiniteOutputError` unless every utterance's log-probabilities are finite.

    Why: CTC decoding of NaN picks some label (or blank) anyway, so a broken model or front end
    would print an empty or garbage transcript and succeed; ``audiosep infer`` refuses the same.
    """
    bad = sum(not bool(torch.isfinite(lp).all()) for lp in log_probs)
    if bad:
        raise NonFiniteOutputError(
            f"the model produced non-finite output (NaN/Inf) for {bad} of {len(log_probs)} utterance(s); no transcript"
        )


def frame_energies(audio: CheckedAudio, frame: int) -> Tensor:
    """Mean square of the mono mixdown over consecutive ``frame``-sample frames (read in blocks)."""
    block = max(frame, BLOCK_FRAMES // frame * frame)
    energies = []
    for start in range(0, audio.frames, block):
        mono = to_mono(audio.read(start, start + block))
        usable = mono.shape[-1] // frame * frame
        if usable:
            energies.append(mono[:usable].view(-1, frame).square().mean(dim=1))
        if usable < mono.shape[-1]:
            energies.append(mono[usable:].square().mean().view(1))
    return torch.cat(energies)


def quiet_cuts(energies: Tensor, max_frames: int, search_frames: int) -> list[int]:
    """Frame indices ``[0, ..., len(energies)]`` cutting it into pieces of at most ``max_frames``.

    Each cut falls just after the lowest-energy frame among the last ``search_frames`` of its piece
    (the earliest such frame on ties), so that words are rarely cut, and leaves at least
    ``search_frames`` after it (a cut at the very end left a piece of a few samples, transcribed as a
    stray word).
    """
    if max_frames < 1 or not 0 < search_frames <= max_frames:
        raise ValueError(f"need 0 < search_frames ({search_frames}) <= max_frames ({max_frames})")
    cuts, total = [0], energies.shape[0]
    while total - cuts[-1] > max_frames:
        first = cuts[-1] + max_frames - search_frames
        last = min(cuts[-1] + max_frames, total - search_frames)  # > first, as total > cuts[-1] + max_frames
        cuts.append(first + int(torch.argmin(energies[first:last])) + 1)
    return [*cuts, total]


def pad_batch(waveforms: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Zero-pad 1-D waveforms to ``([B, N_max], lengths [B])``."""
    lengths = torch.tensor([w.shape[-1] for w in waveforms], dtype=torch.long)
    batch = torch.zeros(len(waveforms), int(lengths.max()))
    for row, wave in enumerate(waveforms):
        batch[row, : wave.shape[-1]] = wave
    return batch, lengths


def check_batching(
    batch_size: int, segment_seconds: float, names: tuple[str, str] = ("batch_size", "segment_seconds")
) -> None:
    """Raise ``ValueError`` for a batch size below 1 or a segment too short (or infinite) to cut; ``names``: what
    the message calls the two (the arguments, or a command's flags)."""
    if batch_size < 1:
        raise ValueError(f"{names[0]} must be >= 1, got {batch_size}")
    if not 2 * CUT_SEARCH_SECONDS <= segment_seconds < math.inf:
        raise ValueError(f"{names[1]} must be finite and at least {2 * CUT_SEARCH_SECONDS:g}, got {segment_seconds}")


class Transcriber:
    """Audio in, text out.

    Args:
        model: acoustic model ``(features, lengths) -> (log_probs, out_lengths)``.
        features: the front end the model was trained with.
        tokenizer: the model's vocabulary.
        decoder: maps ``(log_probs, lengths)`` to label ids (default: greedy).
        device: where to run.
        batch_size: utterances per forward pass.
        segment_seconds: longest piece of a file transcribed at once (longer files are cut).

    Example:
        >>> tr = Transcriber.from_checkpoint("last.ckpt", beam_size=8)  # doctest: +SKIP
        >>> tr.transcribe_file("speech.flac")  # doctest: +SKIP
        'hello world'
    """

    def __init__(
        self,
        model: nn.Module,
        features: LogMelFeatures,
        tokenizer: CharTokenizer,
        decoder: Decoder | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        segment_seconds: float = SEGMENT_SECONDS,
    ) -> None:
        check_batching(batch_size, segment_seconds)
        self.segment_seconds = segment_seconds
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.features = features.eval().to(self.device)
        self.tokenizer = tokenizer
        self.decoder = decoder or build_decoder(tokenizer.vocabulary)
        self.batch_size = batch_size
        self._memory_checked: tuple[int, float] | None = None  # the batch size and segment found to fit

    @property
    def sample_rate(self) -> int:
        """Rate the model expects; other rates are resampled."""
        return self.features.sample_rate

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        segment_seconds: float = SEGMENT_SECONDS,
        **decoder_options: Any,
    ) -> Transcriber:
        """Rebuild from an audiosep model file or a Lightning ``.ckpt`` written by ``ASRTask``.

        Args:
            path: the checkpoint.
            device: where to run.
            batch_size: utterances per forward pass.
            segment_seconds: longest piece of a file transcribed at once.
            decoder_options: :func:`audiosep.decoding.build_decoder` options (``beam_size``,
                ``lm_path``, ``lexicon_path``, ``lm_weight``, ``word_score``).

        Raises:
            CheckpointError: not an ASR checkpoint (no front end or vocabulary in its metadata).
        """
        model, metadata = load_model(path)
        if not isinstance(model, QuartzNet):
            raise CheckpointError(f"{path}: holds a {type(model).__name__}, not a speech recogniser")
        missing = [key for key in ("features", "vocabulary") if key not in metadata]
        if missing:
            raise CheckpointError(f"{path}: not an ASR checkpoint (metadata lacks {missing})")
        try:  # metadata is file input too: bounded front end, and a vocabulary that fits the model
            features = build_untrusted(LogMelFeatures, metadata["features"], {"n_fft": 1 << 16, "n_mels": 1 << 10})
            tokenizer = CharTokenizer(metadata["vocabulary"])
        except (TypeError, ValueError) as err:  # CheckpointError is a ValueError
            raise CheckpointError(f"{path}: bad ASR metadata ({' '.join(str(err).split())[:300]})") from err
        fits = (
            features.sample_rate == metadata.get("sample_rate")
            and getattr(model, "in_features", None) == features.n_mels
            and getattr(model, "num_classes", None) == tokenizer.blank + 1
        )
        if not fits:
            raise CheckpointError(f"{path}: the model, its front end and its vocabulary do not fit together")
        decoder = build_decoder(tokenizer.vocabulary, **decoder_options)
        return cls(model, features, tokenizer, decoder, device, batch_size, segment_seconds)

    @functools.cached_property
    def _model_second_mib(self) -> float | None:
        """:func:`~audiosep.cost.estimated_peak_mib` of the model over one utterance of 1 s (its features,
        on the meta device); None when it cannot run there."""
        from audiosep.cost import estimated_peak_mib

        frames = self.features.frame_lengths(torch.tensor([self.sample_rate]))
        features = torch.zeros(1, self.features.n_mels, int(frames), device="meta")
        return estimated_peak_mib(self.model, features, frames.to("meta"))

    def pass_memory_mib(self, batch_size: int, seconds: float) -> float | None:
        """Estimated memory (MiB) of one forward pass over ``batch_size`` utterances of ``seconds``, before any runs:
        the front end from its sizes, the model's meta-device pass over 1 s scaled by length and batch; None where
        there is no estimate."""
        model = self._model_second_mib
        if model is None:
            return None
        front_end = front_end_bytes_per_sample(self.features) * self.sample_rate / 2**20
        return batch_size * max(1.0, seconds) * (front_end + model)

    def fit_to_available_memory(self) -> None:
        """Lower the batch size, then shorten the segments, when a pass would take more than
        :func:`~audiosep.bench.memory.memory_room_mib` (estimated before any pass).

        Why: a small model file can describe a recogniser that needs a gigabyte per second of audio (one wide
        block: reviewer); the default 8 segments of 30 s then asked for hundreds of gigabytes.

        Raises:
            ValueError: even one segment of the shortest length (:data:`CUT_SEARCH_SECONDS` twice) would not fit.
        """
        from audiosep.bench.memory import memory_room_mib

        if self._memory_checked == (self.batch_size, self.segment_seconds):
            return
        wanted = (self.batch_size, self.segment_seconds)
        need, room = self.pass_memory_mib(*wanted), memory_room_mib(self.device)
        if need is not None and room is not None and need > room:
            one = self.pass_memory_mib(1, self.segment_seconds)
            if one <= room:
                self.batch_size = max(1, int(self.batch_size * room / need))
            else:
                shortest = 2 * CUT_SEARCH_SECONDS
                seconds = self.segment_seconds * room / one
                if seconds < shortest:
                    raise ValueError(
                        f"the model needs about {one:.0f} MiB of memory for one {self.segment_seconds:g} s segment "
                        f"({self.pass_memory_mib(1, shortest):.0f} MiB for {shortest:g} s, the shortest); "
                        f"{room:.0f} MiB can be used on {self.device}"
                    )
                self.batch_size, self.segment_seconds = 1, seconds
            log.warning("batches of %d segments of at most %.1f s: %d of %g s would need about %.0f MiB, %.0f MiB "
                        "can be used", self.batch_size, self.segment_seconds, *wanted, need, room)  # fmt: skip
        self._memory_checked = (self.batch_size, self.segment_seconds)

    def prepare(self, waveform: Tensor, sample_rate: int, name: str = "input") -> Tensor:
        """A float ``[N]`` or ``[C, N]`` waveform, checked, mixed down to mono and resampled to :attr:`sample_rate`.

        Raises:
            AudioError: not a float tensor of that layout (soundfile's ``[N, C]`` is refused: pass its ``.T``;
                integer PCM: read files as float32), a sample rate that is not a whole number of Hz in range, NaN/Inf
                or samples beyond +-1e4, or fewer samples than one analysis window (as for files: such input was
                transcribed as noise, and int16 at 32768 times its level, reviewer).
        """
        rate = check_sample_rate(sample_rate)
        mono = mono_waveform(waveform, name, TRANSCRIBE_ONE_CHANNEL, log)
        check_sample_values(mono)
        self._check_frames(mono.shape[-1], rate)
        if rate != self.sample_rate:
            log.info("%s: resampling %d Hz -> %d Hz", name, rate, self.sample_rate)
        return resampled(mono, rate, self.sample_rate)

    @torch.inference_mode()
    def log_probs(self, waveforms: Sequence[Tensor]) -> list[Tensor]:
        """Per-utterance ``[T'_i, V]`` log-probabilities of mono waveforms at :attr:`sample_rate`."""
        batch, lengths = pad_batch(waveforms)
        feats, frames = self.features(batch.to(self.device), lengths.to(self.device))
        log_probs, out_lengths = self.model(feats, frames)
        return [log_probs[i, : int(n)].cpu() for i, n in enumerate(out_lengths)]

    def transcribe(self, waveforms: Sequence[Tensor]) -> list[str]:
        """Transcripts of mono waveforms at :attr:`sample_rate`, batched by length.

        Raises:
            NonFiniteOutputError: the model's output for some waveform is not finite.
        """
        for index, waveform in enumerate(waveforms):  # a [C, N] or integer tensor was taken as it came (reviewer)
            if not isinstance(waveform, Tensor) or not waveform.is_floating_point() or waveform.dim() != 1 or not len(waveform):
                raise AudioError(f"waveform {index}: a non-empty mono float [N] tensor at {self.sample_rate} Hz is "
                                 f"needed (Transcriber.prepare makes one), got {kind_of(waveform)}")  # fmt: skip
            # resampling a waveform within +-MAX_SAMPLE overshoots by a fifth at most (Gibbs): beyond twice that, no audio
            check_sample_values(waveform, limit=2 * MAX_SAMPLE)
        self.fit_to_available_memory()
        order = sorted(range(len(waveforms)), key=lambda i: waveforms[i].shape[-1])
        texts: dict[int, str] = {}
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            outputs = self.log_probs([waveforms[i] for i in chunk])
            check_finite(outputs)
            padded = nn.utils.rnn.pad_sequence(outputs, batch_first=True)  # [B, T'_max, V]
            lengths = torch.tensor([o.shape[0] for o in outputs])
            for index, ids in zip(chunk, self.decoder(padded, lengths), strict=True):
                texts[index] = single_spaces(self.tokenizer.decode(ids))
        return [texts[i] for i in range(len(waveforms))]

    def segments(self, audio: CheckedAudio) -> list[Tensor]:
        """``audio`` as mono waveforms at :attr:`sample_rate`: whole, or cut at quiet moments when long."""
        self.fit_to_available_memory()  # may shorten the segments: before any cut
        rate, frames = audio.sample_rate, audio.frames
        if audio.channels > 1:
            log.info("%s: mixing %d channels down to mono", audio.path, audio.channels)
        if rate != self.sample_rate:
            log.info("%s: resampling %d Hz -> %d Hz", audio.path, rate, self.sample_rate)
        frame = max(1, round(ENERGY_FRAME_SECONDS * rate))
        if frames <= self.segment_seconds * rate:
            cuts = [0, frames]
        else:
            max_frames = int(self.segment_seconds * rate) // frame
            search = int(CUT_SEARCH_SECONDS * rate) // frame
            cuts = [c * frame for c in quiet_cuts(frame_energies(audio, frame), max_frames, search)]
            cuts[-1] = frames
        length = resampled_length(frames, rate, self.sample_rate)
        edges = [min(length, round(c * self.sample_rate / rate)) for c in cuts]
        edges[-1] = length
        return [
            resample_span(lambda a, b: to_mono(audio.read(a, b)), frames, rate, self.sample_rate, start, stop)
            for start, stop in zip(edges[:-1], edges[1:], strict=True)
        ]

    def transcribe_segmented(self, files: Sequence[Sequence[Tensor]]) -> list[str]:
        """One transcript per file from its segments (:meth:`segments`), all batched together, joined by spaces."""
        flat = [segment for segments in files for segment in segments]
        texts = iter(self.transcribe(flat))
        return [" ".join(text for text in (next(texts) for _ in segments) if text) for segments in files]

    def check_length(self, audio: CheckedAudio) -> None:
        """Raise ``AudioError`` when ``audio`` is shorter than one analysis window of the front end.

        Why: the features of a few samples are all padding, and their transcript is noise, not speech.
        """
        self._check_frames(audio.frames, audio.sample_rate, audio.path)

    def _check_frames(self, frames: int, rate: int, path: os.PathLike | None = None) -> None:
        window = self.features.win_length
        if resampled_length(frames, rate, self.sample_rate) < window:
            raise AudioError(
                f"too short: {frames} samples at {rate} Hz ({1000 * frames / rate:.1f} ms); the recogniser needs "
                f"at least one {1000 * window / self.sample_rate:.0f} ms analysis window",
                path,
            )

    def transcribe_file(self, path: str | os.PathLike) -> str:
        """Transcript of one audio file (checked, and cut into segments when long).

        Raises:
            AudioError: the file is missing, unreadable, truncated, holds non-finite samples, or is
                shorter than one analysis window.
            NonFiniteOutputError: the model's output is not finite.
        """
        with CheckedAudio(path) as audio:
            self.check_length(audio)
            return self.transcribe_segmented([self.segments(audio)])[0]
