"""Speech recognition of audio files: ``Transcriber`` = front end + acoustic model + CTC decoder.

Files of any sample rate and channel count are mixed down to mono and resampled to the model's
rate (both logged). Utterances are batched by length; the model masks padding, so a file gets the
same transcript alone or in a batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from audiosep.checkpoint import CheckpointError, build_untrusted, load_model
from audiosep.data.audio import read_audio, resample, to_mono
from audiosep.data.tokenizer import CharTokenizer
from audiosep.decoding import Decoder, build_decoder
from audiosep.models.quartznet import QuartzNet
from audiosep.nn.features import LogMelFeatures

log = logging.getLogger(__name__)


def pad_batch(waveforms: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Zero-pad 1-D waveforms to ``([B, N_max], lengths [B])``."""
    lengths = torch.tensor([w.shape[-1] for w in waveforms], dtype=torch.long)
    batch = torch.zeros(len(waveforms), int(lengths.max()))
    for row, wave in enumerate(waveforms):
        batch[row, : wave.shape[-1]] = wave
    return batch, lengths


class Transcriber:
    """Audio in, text out.

    Args:
        model: acoustic model ``(features, lengths) -> (log_probs, out_lengths)``.
        features: the front end the model was trained with.
        tokenizer: the model's vocabulary.
        decoder: maps ``(log_probs, lengths)`` to label ids (default: greedy).
        device: where to run.
        batch_size: utterances per forward pass.

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
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.features = features.eval().to(self.device)
        self.tokenizer = tokenizer
        self.decoder = decoder or build_decoder(tokenizer.vocabulary)
        self.batch_size = batch_size

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
        **decoder_options: Any,
    ) -> Transcriber:
        """Rebuild from an audiosep model file or a Lightning ``.ckpt`` written by ``ASRTask``.

        Args:
            path: the checkpoint.
            device: where to run.
            batch_size: utterances per forward pass.
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
        return cls(model, features, tokenizer, decoder, device, batch_size)

    def prepare(self, waveform: Tensor, sample_rate: int, name: str = "input") -> Tensor:
        """Mono mixdown of ``[C, N]`` (or ``[N]``) audio and resampling to :attr:`sample_rate`."""
        if waveform.dim() == 2 and waveform.shape[0] > 1:
            log.info("%s: mixing %d channels down to mono", name, waveform.shape[0])
        mono = to_mono(waveform).float()
        if sample_rate != self.sample_rate:
            log.info("%s: resampling %d Hz -> %d Hz", name, sample_rate, self.sample_rate)
        return resample(mono, sample_rate, self.sample_rate)

    @torch.inference_mode()
    def log_probs(self, waveforms: Sequence[Tensor]) -> list[Tensor]:
        """Per-utterance ``[T'_i, V]`` log-probabilities of mono waveforms at :attr:`sample_rate`."""
        batch, lengths = pad_batch(waveforms)
        feats, frames = self.features(batch.to(self.device), lengths.to(self.device))
        log_probs, out_lengths = self.model(feats, frames)
        return [log_probs[i, : int(n)].cpu() for i, n in enumerate(out_lengths)]

    def transcribe(self, waveforms: Sequence[Tensor]) -> list[str]:
        """Transcripts of mono waveforms at :attr:`sample_rate`, batched by length."""
        order = sorted(range(len(waveforms)), key=lambda i: waveforms[i].shape[-1])
        texts: dict[int, str] = {}
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            outputs = self.log_probs([waveforms[i] for i in chunk])
            padded = nn.utils.rnn.pad_sequence(outputs, batch_first=True)  # [B, T'_max, V]
            lengths = torch.tensor([o.shape[0] for o in outputs])
            for index, ids in zip(chunk, self.decoder(padded, lengths), strict=True):
                texts[index] = self.tokenizer.decode(ids)
        return [texts[i] for i in range(len(waveforms))]

    def transcribe_file(self, path: str | os.PathLike) -> str:
        """Transcript of one audio file.

        Raises:
            UserError: the file is missing or unreadable.
        """
        waveform, rate = read_audio(path)
        return self.transcribe([self.prepare(waveform, rate, str(path))])[0]
