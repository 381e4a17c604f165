"""Character tokenizer for CTC: a list of labels plus a blank, as in NeMo's QuartzNet.

The default vocabulary is LibriSpeech's: space, ``a``-``z`` and the apostrophe (28 labels); the
CTC blank is the last index (28), so the model has 29 outputs and NeMo checkpoints map one to one.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

DEFAULT_VOCABULARY: tuple[str, ...] = (" ", *"abcdefghijklmnopqrstuvwxyz", "'")

_APOSTROPHES = re.compile(r"[\u2018\u2019\u02bc`]")
_WORD_JOINERS = re.compile(r"[-\u2010-\u2015_/]")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str, vocabulary: Sequence[str] = DEFAULT_VOCABULARY) -> str:
    """LibriSpeech-style normalisation: lower case, accents stripped, hyphens as spaces, out-of-vocabulary
    characters dropped, runs of spaces collapsed.

    Example:
        >>> normalize_text("  Don’t  STOP -- café!")
        "don't stop cafe"
    """
    decomposed = unicodedata.normalize("NFKD", text)
    ascii_text = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).lower()
    ascii_text = _APOSTROPHES.sub("'", ascii_text)
    ascii_text = _WORD_JOINERS.sub(" ", ascii_text)
    allowed = set(vocabulary)
    kept = "".join(ch if ch in allowed else (" " if ch.isspace() else "") for ch in ascii_text)
    return _SPACES.sub(" ", kept).strip()


def dropped_characters(text: str, vocabulary: Sequence[str] = DEFAULT_VOCABULARY) -> set[str]:
    """The letters and digits of ``text`` that :func:`normalize_text` drops (not in ``vocabulary`` even once
    lower-cased and stripped of accents): "CHAPTER 12" loses "1" and "2", "STRASSE" nothing, "STRAßE" "ß"."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).lower()
    allowed = set(vocabulary)
    return {ch for ch in plain if ch.isalnum() and ch not in allowed}


def dropped_summary(texts: Sequence[str], vocabulary: Sequence[str] = DEFAULT_VOCABULARY) -> tuple[int, str]:
    """How many ``texts`` lose letters or digits to :func:`normalize_text` (:func:`dropped_characters`), and
    those characters, sorted (the first 20), for a warning."""
    hit = [chars for chars in (dropped_characters(text, vocabulary) for text in texts) if chars]
    return len(hit), "".join(sorted(set().union(*hit)))[:20]


class CharTokenizer:
    """Text <-> label ids over a character vocabulary; the CTC blank is ``len(vocabulary)``.

    Args:
        vocabulary: the labels (single characters, unique); ``None`` takes :data:`DEFAULT_VOCABULARY`.

    Raises:
        ValueError: empty vocabulary, multi-character, repeated or surrogate labels.

    Example:
        >>> tok = CharTokenizer()
        >>> tok.decode(tok.encode("Hello World"))
        'hello world'
    """

    def __init__(self, vocabulary: Sequence[str] | None = None) -> None:
        labels = list(DEFAULT_VOCABULARY if vocabulary is None else vocabulary)
        if not labels:
            raise ValueError("the vocabulary is empty")
        bad = [label for label in labels if not isinstance(label, str) or len(label) != 1]
        if bad:
            raise ValueError(f"every label must be one character; got {bad!r}")
        if len(set(labels)) != len(labels):
            raise ValueError(f"the vocabulary repeats labels: {labels!r}")
        surrogates = [label for label in labels if "\ud800" <= label <= "\udfff"]
        if surrogates:  # no UTF-8 text holds one: a transcript with it could not be printed or written
            raise ValueError(f"the vocabulary holds lone surrogates, not characters: {surrogates!r}")
        self.vocabulary: list[str] = labels
        self._index = {label: i for i, label in enumerate(labels)}

    @property
    def blank(self) -> int:
        """Index of the CTC blank (the last output of the model)."""
        return len(self.vocabulary)

    @property
    def num_classes(self) -> int:
        """Number of model outputs: labels + blank."""
        return len(self.vocabulary) + 1

    def normalize(self, text: str) -> str:
        """:func:`normalize_text` with this tokenizer's vocabulary."""
        return normalize_text(text, self.vocabulary)

    def encode(self, text: str) -> list[int]:
        """Normalise ``text`` and map it to label ids (no blanks)."""
        return [self._index[ch] for ch in self.normalize(text)]

    def decode(self, ids: Sequence[int]) -> str:
        """Map label ids back to text; blanks and out-of-range ids are skipped (no CTC collapsing here)."""
        return "".join(self.vocabulary[i] for i in ids if 0 <= i < len(self.vocabulary))
