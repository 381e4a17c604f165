"""CTC decoding: greedy, prefix beam search (pure PyTorch), and flashlight's decoder with a KenLM.

:func:`build_decoder` picks one from two settings: ``beam_size=1`` and no language model is greedy;
``beam_size>1`` without a language model is the built-in prefix beam search; a language model path
uses torchaudio's ``ctc_decoder`` (needs the ``flashlight-text`` package), optionally with a lexicon.
Every decoder maps ``(log_probs [B, T, V], lengths [B])`` to a list of label-id lists (no blanks).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from audiosep.errors import UserError

Decoder = Callable[[Tensor, Tensor], list[list[int]]]


def ctc_collapse(path: Sequence[int], blank: int) -> list[int]:
    """Merge repeated labels, then drop blanks: the CTC many-to-one map B."""
    out, previous = [], None
    for label in path:
        if label != previous and label != blank:
            out.append(int(label))
        previous = label
    return out


def greedy_decode(log_probs: Tensor, lengths: Tensor, blank: int) -> list[list[int]]:
    """Best path: argmax per frame over the valid frames, collapsed."""
    best = log_probs.argmax(dim=-1).cpu()  # [B, T]
    return [ctc_collapse(best[b, : int(n)].tolist(), blank) for b, n in enumerate(lengths.cpu())]


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    high, low = (a, b) if a > b else (b, a)
    return high + math.log1p(math.exp(low - high))


def prefix_beam_search(log_probs: Tensor, beam_size: int, blank: int, prune: float = -12.0) -> list[int]:
    """CTC prefix beam search (Hannun et al. 2014) over one utterance, no language model.

    Each prefix keeps two scores, ending in blank and ending in a label, so all alignments of a
    prefix are summed; the ``beam_size`` best prefixes survive each frame. Labels whose frame
    log-probability is below ``prune`` are not expanded (speed; they cannot win a narrow beam).

    Args:
        log_probs: ``[T, V]`` frame log-probabilities.
        beam_size: prefixes kept per frame.
        blank: index of the blank.

    Returns:
        The most probable label sequence found.
    """
    frames = log_probs.detach().double().cpu()
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}  # prefix -> (blank, label)
    for frame in frames.tolist():
        candidates = [v for v, lp in enumerate(frame) if lp >= prune or v == blank]
        nxt: dict[tuple[int, ...], list[float]] = {}
        for prefix, (p_blank, p_label) in beams.items():
            total = _logaddexp(p_blank, p_label)
            for v in candidates:
                lp = frame[v]
                if v == blank:
                    entry = nxt.setdefault(prefix, [-math.inf, -math.inf])
                    entry[0] = _logaddexp(entry[0], total + lp)
                    continue
                extended = (*prefix, v)
                entry = nxt.setdefault(extended, [-math.inf, -math.inf])
                if prefix and prefix[-1] == v:
                    entry[1] = _logaddexp(entry[1], p_blank + lp)  # a repeat needs a blank in between
                    same = nxt.setdefault(prefix, [-math.inf, -math.inf])
                    same[1] = _logaddexp(same[1], p_label + lp)  # or it merges into the same label
                else:
                    entry[1] = _logaddexp(entry[1], total + lp)
        ranked = sorted(nxt.items(), key=lambda item: _logaddexp(*item[1]), reverse=True)
        beams = {prefix: (scores[0], scores[1]) for prefix, scores in ranked[:beam_size]}
    best = max(beams.items(), key=lambda item: _logaddexp(*item[1]))
    return list(best[0])


def single_spaces(text: str) -> str:
    """``text`` with runs of spaces as one and none at the ends (greedy CTC leaves both). Only the space:
    other labels of a vocabulary (a tab, a newline) are text the output escapes."""
    return re.sub(" {2,}", " ", text).strip(" ")


def prefix_beam_decode(log_probs: Tensor, lengths: Tensor, blank: int, beam_size: int) -> list[list[int]]:
    """:func:`prefix_beam_search` over each valid segment of a batch."""
    return [prefix_beam_search(log_probs[b, : int(n)], beam_size, blank) for b, n in enumerate(lengths.cpu())]


class FlashlightDecoder:
    """torchaudio's flashlight CTC beam search with an optional KenLM (word LM needs a lexicon).

    Args:
        vocabulary: the labels; the blank is ``len(vocabulary)``. A space label becomes the word
            separator ``|``.
        beam_size: hypotheses kept per frame.
        lm_path: KenLM ``.arpa`` or ``.bin``; ``None`` decodes without a language model.
        lexicon_path: ``word c h a r s |`` per line; ``None`` is lexicon-free decoding.
        lm_weight: language model weight.
        word_score: score added per word (insertion bonus).

    Raises:
        UserError: flashlight-text is not installed, a path does not exist, or the vocabulary has no
            word separator (no space label).
    """

    def __init__(
        self,
        vocabulary: Sequence[str],
        beam_size: int = 16,
        lm_path: str | os.PathLike | None = None,
        lexicon_path: str | os.PathLike | None = None,
        lm_weight: float = 0.5,
        word_score: float = 0.0,
    ) -> None:
        for path in (lm_path, lexicon_path):
            if path is not None and not Path(path).is_file():
                raise UserError(f"{path}: no such file")
        try:
            from torchaudio.models.decoder import ctc_decoder
        except (ImportError, RuntimeError) as err:  # torchaudio raises RuntimeError without flashlight
            raise UserError("beam search with a language model needs `pip install flashlight-text`") from err
        if " " in vocabulary and "|" in vocabulary:  # both would be flashlight's separator "|"
            raise UserError("beam search with flashlight needs '|' as the word separator, and this vocabulary has "
                            "both a space and a '|' label; decode greedily (no --lm, no --lexicon)")  # fmt: skip
        self.tokens = ["|" if label == " " else label for label in vocabulary] + ["<blank>"]
        if "|" not in self.tokens:  # flashlight then took the first label for silence: "c" came out "aca"
            raise UserError("beam search needs a word separator (a space label) in the model's vocabulary, and this "
                            "one has none; decode greedily (no --lm, no --lexicon)")  # fmt: skip
        try:
            self._decoder = ctc_decoder(
                lexicon=None if lexicon_path is None else str(lexicon_path),
                tokens=self.tokens,
                lm=None if lm_path is None else str(lm_path),
                beam_size=beam_size,
                lm_weight=lm_weight,
                word_score=word_score,
                blank_token="<blank>",
                sil_token="|",
                log_add=True,
            )
        except RuntimeError as err:  # unreadable LM or lexicon; KenLM's message spans lines
            reason = str(err).strip().splitlines()[-1]
            raise UserError(f"cannot load the language model or lexicon: {reason}") from err
        self.blank = len(vocabulary)

    def __call__(self, log_probs: Tensor, lengths: Tensor) -> list[list[int]]:
        emissions, lengths = self._end_with_separator(log_probs.detach().float().cpu(), lengths.cpu())
        hypotheses = self._decoder(emissions, lengths.to(torch.int32))
        out = []
        for best in (hyps[0] if hyps else None for hyps in hypotheses):
            ids = [] if best is None else best.tokens.tolist()
            # already collapsed by torchaudio (repeats merged, blanks dropped): collapsing again merged real
            # double letters ("aa" -> "a")
            out.append(self._strip([int(i) for i in ids if i != self.blank]))
        return out

    def _end_with_separator(self, emissions: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Append one frame that is certainly the word separator after each utterance's last frame.

        A lexicon spells each word up to its ``|``, and flashlight completes a word only there: a
        transcript's last word, which CTC models end without a separator, was dropped ("aa b" -> "aa").
        The frame has log-probability 0 for ``|``, so every hypothesis' acoustic score is unchanged.
        """
        batch, frames, labels = emissions.shape
        padded = torch.full((batch, frames + 1, labels), -1e30)
        padded[:, :frames] = emissions
        rows = torch.arange(batch)
        padded[rows, lengths.long()] = torch.full((labels,), -1e30).index_fill(0, torch.tensor(self.separator), 0.0)
        return padded.contiguous(), lengths + 1

    @property
    def separator(self) -> int:
        """The index of the word separator ``|`` among the labels."""
        return self.tokens.index("|")

    def _strip(self, ids: list[int]) -> list[int]:
        """Drop the word separators that flashlight adds at both ends of the hypothesis."""
        separator = self.separator
        while ids and ids[0] == separator:
            ids = ids[1:]
        while ids and ids[-1] == separator:
            ids = ids[:-1]
        return ids


def build_decoder(
    vocabulary: Sequence[str],
    beam_size: int = 1,
    lm_path: str | os.PathLike | None = None,
    lexicon_path: str | os.PathLike | None = None,
    lm_weight: float = 0.5,
    word_score: float = 0.0,
) -> Decoder:
    """Greedy (``beam_size=1``, no LM), prefix beam search (no LM) or flashlight with an LM.

    Raises:
        UserError: ``beam_size < 1``, a non-finite LM weight or word score, or an LM without
            flashlight-text installed.
    """
    if beam_size < 1:
        raise UserError(f"beam size must be >= 1, got {beam_size}")
    if not (math.isfinite(lm_weight) and math.isfinite(word_score)):
        raise UserError(f"LM weight and word score must be finite numbers, got {lm_weight} and {word_score}")
    blank = len(vocabulary)
    if lm_path is not None or lexicon_path is not None:
        return FlashlightDecoder(vocabulary, beam_size, lm_path, lexicon_path, lm_weight, word_score)
    if beam_size == 1:
        return lambda log_probs, lengths: greedy_decode(log_probs, lengths, blank)
    return lambda log_probs, lengths: prefix_beam_decode(log_probs, lengths, blank, beam_size)
