"""``ASRTask``: CTC training of a built acoustic model (e.g. QuartzNet) with its log-mel front end.

The task owns what turns audio and text into tensors (front end, augmentation, tokenizer) so that
the data module stays a list of files; it logs ``train_loss``, ``val_loss``, ``val_wer``, ``val_cer``
(``test_*`` on test), and writes the model record (class path, init args, weights, and the front end
and vocabulary in the metadata) into every Lightning checkpoint, so that
``Transcriber.from_checkpoint(last.ckpt)`` needs no recipe.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.text import CharErrorRate, WordErrorRate

from audiosep.asr_metadata import asr_metadata
from audiosep.checkpoint import LIGHTNING_KEY, model_record
from audiosep.data.tokenizer import CharTokenizer, dropped_summary
from audiosep.decoding import greedy_decode, single_spaces
from audiosep.errors import ConfigError
from audiosep.nn.features import LogMelFeatures, SpecAugment, SpecCutout
from audiosep.tasks.guards import TrainingGuards


def ctc_loss(log_probs: Tensor, out_lengths: Tensor, targets: list[list[int]], blank: int) -> Tensor:
    """Mean over the batch of per-utterance CTC losses, computed in float32 (safe under autocast).

    Utterances too short for their transcript give an infinite loss; they are zeroed
    (``zero_infinity``) rather than poisoning the batch.
    """
    target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
    flat = torch.tensor([label for t in targets for label in t], dtype=torch.long)
    with torch.autocast(log_probs.device.type, enabled=False):
        losses = F.ctc_loss(
            log_probs.float().transpose(0, 1),  # [T', B, V]
            flat.to(log_probs.device),
            out_lengths,
            target_lengths.to(log_probs.device),
            blank=blank,
            reduction="none",
            zero_infinity=True,
        )
    return losses.mean()


class ASRTask(TrainingGuards, pl.LightningModule):
    """CTC speech recognition around a built model ``(features, lengths) -> (log_probs, lengths)``.

    Args:
        model: the acoustic model (its ``in_features`` must equal the front end's mel bins and its
            ``num_classes`` the vocabulary size + 1, when it has those attributes).
        features: log-mel front end (default: NeMo's 16 kHz, 64-mel settings).
        spec_augment: frequency/time masking applied to training features (optional).
        spec_cutout: rectangle cut-out applied to training features (optional).
        vocabulary: characters of the tokenizer (default: space, a-z, apostrophe); blank is last.

    Raises:
        ValueError: the model's input or output size does not match the front end or vocabulary.
    """

    def __init__(
        self,
        model: nn.Module,
        features: LogMelFeatures | None = None,
        spec_augment: SpecAugment | None = None,
        spec_cutout: SpecCutout | None = None,
        vocabulary: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.features = features if features is not None else LogMelFeatures()
        self.spec_augment, self.spec_cutout = spec_augment, spec_cutout
        self.tokenizer = CharTokenizer(vocabulary)
        expected = {"in_features": self.features.n_mels, "num_classes": self.tokenizer.num_classes}
        for name, value in expected.items():
            if getattr(model, name, value) != value:
                raise ValueError(f"model {name}={getattr(model, name)} but the task needs {value}")
        self.val_wer, self.val_cer = WordErrorRate(), CharErrorRate()
        self.test_wer, self.test_cer = WordErrorRate(), CharErrorRate()
        self.init_guards()

    def forward(self, waveforms: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``waveforms [B, N]``, ``lengths [B]`` -> ``(log_probs [B, T', V], out_lengths [B])``."""
        feats, frames = self.features(waveforms, lengths)
        if self.training:
            for augment in (self.spec_augment, self.spec_cutout):
                if augment is not None:
                    feats = augment(feats, frames)
        return self.model(feats, frames)

    def _loss(self, batch: tuple[Tensor, Tensor, list[str]]) -> tuple[Tensor, Tensor, Tensor]:
        waveforms, lengths, texts = batch
        log_probs, out_lengths = self(waveforms, lengths)
        targets = [self.tokenizer.encode(text) for text in texts]
        return ctc_loss(log_probs, out_lengths, targets, self.tokenizer.blank), log_probs, out_lengths

    def training_step(self, batch: tuple[Tensor, Tensor, list[str]], batch_idx: int) -> Tensor | None:
        """CTC loss; a non-finite one skips the step on every rank (:mod:`audiosep.tasks.guards`)."""
        loss, _, _ = self._loss(batch)
        loss = self.guard_loss(loss, len(batch[2]))
        if loss is not None and not self._drop_gradients:
            self.log("train_loss", loss, prog_bar=True, batch_size=len(batch[2]))
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor, list[str]], stage: str) -> None:
        loss, log_probs, out_lengths = self._loss(batch)
        hypotheses = self.decode(log_probs, out_lengths)
        references = [self.tokenizer.normalize(text) for text in batch[2]]
        wer, cer = (self.val_wer, self.val_cer) if stage == "val" else (self.test_wer, self.test_cer)
        wer.update(hypotheses, references)
        cer.update(hypotheses, references)
        size = len(references)
        self.log(f"{stage}_loss", loss, batch_size=size, sync_dist=True)
        self.log(f"{stage}_wer", wer, batch_size=size, prog_bar=stage == "val")
        self.log(f"{stage}_cer", cer, batch_size=size)

    def validation_step(self, batch: tuple[Tensor, Tensor, list[str]], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor, list[str]], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def decode(self, log_probs: Tensor, out_lengths: Tensor) -> list[str]:
        """Greedy transcripts of a batch of model outputs, spaced as ``audiosep transcribe`` and ``evaluate``
        give them (CER counted CTC's doubled and end spaces: 42.9 % for " the  cat " against "the cat")."""
        ids = greedy_decode(log_probs, out_lengths, self.tokenizer.blank)
        return [single_spaces(self.tokenizer.decode(seq)) for seq in ids]

    def setup(self, stage: str) -> None:
        """Check that the data is at the front end's sample rate before any step runs."""
        datamodule = getattr(self.trainer, "datamodule", None)
        rate = getattr(datamodule, "sample_rate", self.features.sample_rate)
        if rate != self.features.sample_rate:
            raise ConfigError(f"data sample_rate={rate} but features.sample_rate={self.features.sample_rate}")

    def on_train_start(self) -> None:
        """Step-interval schedules (``interval = "step"``) are stepped per batch, and given their length.

        A resumed run also gets the checkpoint's RNG states back (SpecAugment draws as unbroken).
        """
        self.restore_rng()
        self.prepare_step_schedules()
        self.warn_dropped_characters()

    def warn_dropped_characters(self) -> None:
        """Warn when training transcripts lose letters or digits to the tokenizer (silently, "CHAPTER 12" trained
        as "chapter"), and how many lose every character (an empty CTC target: the model learns silence)."""
        datasets = getattr(getattr(self.trainer, "datamodule", None), "datasets", {})
        train = datasets.get("train") if isinstance(datasets, dict) else None
        texts = [utterance.text for utterance in getattr(train, "utterances", [])]
        hit, shown = dropped_summary(texts, self.tokenizer.vocabulary)
        if hit:
            empty = sum(not self.tokenizer.encode(text) for text in texts)
            warnings.warn(f"{hit} of {len(texts)} training transcript(s) hold letters or digits outside the "
                          f"vocabulary ({shown!r}), dropped from their CTC targets ({empty} left empty); spell "
                          "numbers as words or extend the vocabulary", stacklevel=2)  # fmt: skip

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the model record without weights: Lightning's ``state_dict`` already holds them."""
        metadata = asr_metadata(self.features, self.tokenizer.vocabulary)
        checkpoint[LIGHTNING_KEY] = model_record(self.model, metadata, with_weights=False)
        self.save_guards(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.load_guards(checkpoint)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Default when the recipe sets no ``optimizer``: AdamW at 1e-3 (the CLI's choice replaces it)."""
        return torch.optim.AdamW(self.parameters(), lr=1e-3)
