"""Character tokenizer and LibriSpeech text normalisation."""

from __future__ import annotations

import random

import pytest

from audiosep.data.tokenizer import DEFAULT_VOCABULARY, CharTokenizer, normalize_text


def test_default_vocabulary_matches_nemo_quartznet():
    tok = CharTokenizer()
    assert tok.vocabulary == [" ", *"abcdefghijklmnopqrstuvwxyz", "'"]
    assert (tok.blank, tok.num_classes) == (28, 29)


def test_round_trip_of_normalised_text():
    rng = random.Random(0)
    tok = CharTokenizer()
    for _ in range(50):
        words = [
            "".join(rng.choice(DEFAULT_VOCABULARY[1:]) for _ in range(rng.randint(1, 8))) for _ in range(5)
        ]
        text = " ".join(words)
        assert tok.decode(tok.encode(text)) == text
        assert all(0 <= i < tok.blank for i in tok.encode(text))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("HE HOPED THERE WOULD BE STEW FOR DINNER", "he hoped there would be stew for dinner"),
        ("  Don\u2019t  STOP -- caf\u00e9!", "don't stop cafe"),
        ("well-known, 42 times.", "well known times"),
        ("tab\tand\nnewline", "tab and newline"),
    ],
)
def test_librispeech_normalisation(raw, expected):
    assert normalize_text(raw) == expected


def test_decode_skips_blank_and_custom_vocabulary():
    tok = CharTokenizer(["x", "y"])
    assert tok.blank == 2
    assert tok.decode([0, 2, 1, 2]) == "xy"
    assert tok.encode("XyZ") == [0, 1]


@pytest.mark.parametrize("bad", [[], ["ab"], ["a", "a"]])
def test_bad_vocabulary_raises(bad):
    with pytest.raises(ValueError):
        CharTokenizer(bad)
