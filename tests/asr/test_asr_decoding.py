"""CTC decoding: greedy vs its definition, prefix beam search vs exhaustive search, flashlight + KenLM."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from audiosep.decoding import build_decoder, ctc_collapse, greedy_decode, prefix_beam_search
from audiosep.errors import UserError


def sequence_log_prob(log_probs: torch.Tensor, labels: list[int], blank: int) -> float:
    """log p(labels | x) summed over all alignments (torch's CTC forward algorithm, float64)."""
    if not labels:
        return float(log_probs[:, blank].sum())
    loss = F.ctc_loss(
        log_probs.double().unsqueeze(1), torch.tensor([labels]), torch.tensor([log_probs.shape[0]]),
        torch.tensor([len(labels)]), blank=blank, reduction="sum",
    )  # fmt: skip
    return -float(loss)


def best_by_exhaustive_search(log_probs: torch.Tensor, blank: int) -> tuple[list[int], float]:
    frames, classes = log_probs.shape
    best, best_score = [], -math.inf
    labels = [v for v in range(classes) if v != blank]
    for length in range(frames + 1):
        for seq in itertools.product(labels, repeat=length):
            score = sequence_log_prob(log_probs, list(seq), blank)
            if score > best_score:
                best, best_score = list(seq), score
    return best, best_score


def test_ctc_collapse():
    assert ctc_collapse([0, 0, 2, 1, 1, 2, 1, 0, 0], blank=2) == [0, 1, 1, 0]


def test_greedy_decodes_argmax_path_within_lengths():
    torch.manual_seed(0)
    log_probs = torch.randn(2, 9, 4).log_softmax(-1)
    lengths = torch.tensor([9, 5])
    out = greedy_decode(log_probs, lengths, blank=3)
    for b, n in enumerate(lengths.tolist()):
        assert out[b] == ctc_collapse(log_probs[b, :n].argmax(-1).tolist(), 3)


@pytest.mark.parametrize("seed", range(6))
def test_prefix_beam_search_finds_most_probable_labelling(seed):
    torch.manual_seed(seed)
    log_probs = (2.5 * torch.randn(5, 3)).log_softmax(-1)  # 5 frames, labels {0, 1}, blank 2
    found = prefix_beam_search(log_probs, beam_size=64, blank=2, prune=-math.inf)
    best, best_score = best_by_exhaustive_search(log_probs, blank=2)
    assert sequence_log_prob(log_probs, found, 2) == pytest.approx(best_score, abs=1e-9)


def test_beam_search_can_beat_greedy():
    # Frames favour blank individually, but "a" summed over its alignments is more probable than "".
    probs = torch.tensor([[0.4, 0.6], [0.4, 0.6]])  # label 0 = "a", 1 = blank
    log_probs = probs.log()
    assert greedy_decode(log_probs[None], torch.tensor([2]), blank=1) == [[]]
    assert prefix_beam_search(log_probs, beam_size=4, blank=1) == [0]  # 0.64 > 0.36


def test_build_decoder_selects_by_flags():
    torch.manual_seed(1)
    log_probs, lengths = torch.randn(2, 6, 4).log_softmax(-1), torch.tensor([6, 4])
    vocabulary = [" ", "a", "b"]
    assert build_decoder(vocabulary)(log_probs, lengths) == greedy_decode(log_probs, lengths, 3)
    beam = build_decoder(vocabulary, beam_size=8)(log_probs, lengths)
    assert beam == [prefix_beam_search(log_probs[b, :n], 8, 3) for b, n in enumerate(lengths.tolist())]
    with pytest.raises(UserError, match="beam size"):
        build_decoder(vocabulary, beam_size=0)
    for weight, score in ((float("nan"), 0.0), (0.5, float("inf"))):
        with pytest.raises(UserError, match="must be finite"):
            build_decoder(vocabulary, beam_size=4, lm_path="/no/such/lm.arpa", lm_weight=weight, word_score=score)
    with pytest.raises(UserError, match="no such file"):
        build_decoder(vocabulary, beam_size=4, lm_path="/no/such/lm.arpa")


def write_arpa(path):
    """A bigram word LM where "ba" is far more likely than "ab"."""
    unigrams = [
        (-1.0, "<unk>", 0.0),
        (0.0, "<s>", -0.3),
        (-1.0, "</s>", 0.0),
        (-3.0, "ab", -0.3),
        (-0.1, "ba", -0.3),
    ]
    bigrams = [(-0.1, "<s> ba"), (-3.0, "<s> ab"), (-0.1, "ba </s>"), (-0.1, "ab </s>")]
    lines = ["\\data\\", "ngram 1=5", "ngram 2=4", "", "\\1-grams:"]
    lines += [f"{p}\t{w}\t{b}" for p, w, b in unigrams] + ["", "\\2-grams:"]
    lines += [f"{p}\t{w}" for p, w in bigrams] + ["", "\\end\\", ""]
    path.write_text("\n".join(lines))


def test_kenlm_word_lm_changes_ambiguous_decision(tmp_path):
    pytest.importorskip(
        "flashlight.lib.text", reason="flashlight-text not installed (pip install flashlight-text)"
    )
    write_arpa(tmp_path / "lm.arpa")
    (tmp_path / "lexicon.txt").write_text("ab a b |\nba b a |\n")
    probs = torch.full((6, 4), 1e-3)  # labels " ", a, b, blank
    probs[0, 1], probs[0, 2], probs[1, 3], probs[2, 2], probs[2, 1] = 0.5, 0.4, 0.9, 0.5, 0.4
    probs[3:, 3] = 0.9
    log_probs = (probs / probs.sum(-1, keepdim=True)).log()[None]
    lengths = torch.tensor([6])
    options = {"beam_size": 8, "lm_path": tmp_path / "lm.arpa", "lexicon_path": tmp_path / "lexicon.txt"}
    assert build_decoder([" ", "a", "b"], lm_weight=0.0, **options)(log_probs, lengths) == [
        [1, 2]
    ]  # acoustics: "ab"
    assert build_decoder([" ", "a", "b"], lm_weight=2.0, **options)(log_probs, lengths) == [
        [2, 1]
    ]  # LM: "ba"


def test_lexicon_decoding_keeps_real_double_letters(tmp_path):
    """torchaudio's decoder returns collapsed tokens; collapsing them again made the lexicon word "aa" "a"
    (reviewer): "hello" would have come out "helo"."""
    pytest.importorskip(
        "flashlight.lib.text", reason="flashlight-text not installed (pip install flashlight-text)"
    )
    probs = torch.full((5, 4), 1e-4)  # labels " ", a, b, blank: the path a, blank, a, blank, blank
    for frame, label in enumerate([1, 3, 1, 3, 3]):
        probs[frame, label] = 1.0
    log_probs, lengths = (probs / probs.sum(-1, keepdim=True)).log()[None], torch.tensor([5])
    (tmp_path / "lexicon.txt").write_text("aa a a |\nb b |\n")
    decoder = build_decoder([" ", "a", "b"], beam_size=4, lexicon_path=tmp_path / "lexicon.txt")
    assert decoder(log_probs, lengths) == [[1, 1]] == build_decoder([" ", "a", "b"])(log_probs, lengths)


def test_lexicon_decoding_keeps_the_last_word(tmp_path):
    """flashlight completes a lexicon word only at its "|", and CTC ends a transcript without one: the last
    word was dropped ("aa b" -> "aa", "ab" -> "") (reviewer)."""
    pytest.importorskip(
        "flashlight.lib.text", reason="flashlight-text not installed (pip install flashlight-text)"
    )
    (tmp_path / "lexicon.txt").write_text("aa a a |\nb b |\nab a b |\n")
    decoder = build_decoder([" ", "a", "b"], beam_size=8, lexicon_path=tmp_path / "lexicon.txt")
    paths = [[1, 3, 1, 0, 2], [1, 2, 3, 3], [2, 0, 1, 3, 1, 0]]  # "aa b", "ab" and blanks, "b aa" and a space
    log_probs = torch.full((len(paths), 7, 4), -20.0)
    for row, path in enumerate(paths):
        log_probs[row, range(len(path)), path] = 0.0
    lengths = torch.tensor([len(path) for path in paths])
    expected = [[1, 1, 0, 2], [1, 2], [2, 0, 1, 1]]
    assert decoder(log_probs.log_softmax(-1), lengths) == expected


def test_beam_search_refuses_a_vocabulary_with_both_space_and_pipe(tmp_path):
    """Both labels became flashlight's separator "|": "Duplicate entry in dictionary" (reviewer)."""
    pytest.importorskip(
        "flashlight.lib.text", reason="flashlight-text not installed (pip install flashlight-text)"
    )
    from audiosep.decoding import FlashlightDecoder

    with pytest.raises(UserError, match="both a space and a '[|]' label"):
        FlashlightDecoder([" ", "|", "a"], beam_size=4)


def test_beam_search_refuses_a_vocabulary_without_a_word_separator(tmp_path):
    """flashlight took the first label for silence: with vocabulary "abc", "c" decoded as "aca" (reviewer)."""
    pytest.importorskip(
        "flashlight.lib.text", reason="flashlight-text not installed (pip install flashlight-text)"
    )
    from audiosep.decoding import FlashlightDecoder
    from audiosep.errors import UserError

    with pytest.raises(UserError, match="needs a word separator"):
        FlashlightDecoder(["a", "b", "c"], beam_size=4)
    FlashlightDecoder([" ", "a", "b"], beam_size=4)  # with a space: fine
