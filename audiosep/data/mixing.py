"""The LibriMix mixing maths shared by offline generation and on-the-fly dynamic mixing.

Loudness targets and clipping protection follow JorisCos/LibriMix ``create_librimix_metadata.py``:
each speech source is brought to a random loudness in :data:`LOUDNESS_RANGE` LUFS (noise
:data:`NOISE_OFFSET` LU lower), a source that would then peak at 1 is scaled to peak
:data:`MAX_AMP` instead, and a mixture peaking above :data:`MAX_AMP` is scaled down with its parts.
Plain Python on array methods (no numpy, scipy or torch import), so command-line parsers can read
these constants cheaply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

RATE = 16000  # LibriSpeech and WHAM! rate the LibriMix metadata assumes
MIX_TYPES = ("mix_clean", "mix_both", "mix_single")  # all sources / sources + noise / first source + noise
LOUDNESS_RANGE = (-33.0, -25.0)  # LUFS targets drawn for each speech source
NOISE_OFFSET = -5.0  # the noise target range sits 5 LU lower
NOISE_LOUDNESS = (LOUDNESS_RANGE[0] + NOISE_OFFSET, LOUDNESS_RANGE[1] + NOISE_OFFSET)
MAX_AMP = 0.9  # peak allowed in a source and in the mixture


def loudness_gain(loudness: float, target: float) -> float:
    """Gain that moves a signal measured at ``loudness`` LUFS to ``target`` LUFS."""
    return 10.0 ** ((target - loudness) / 20.0)


def protected_gain(samples: np.ndarray, loudness: float, target: float) -> float:
    """The recipe's gain of one input: to ``target`` LUFS, or to a :data:`MAX_AMP` peak when the
    scaled input would reach 1 (``loudness`` is the integrated loudness of ``samples``)."""
    gain = loudness_gain(loudness, target)
    if float(abs(samples * gain).max()) >= 1.0:
        gain = MAX_AMP / float(abs(samples).max())
    return gain


def peak_weight(peak: float) -> float:
    """Factor that brings a mixture peaking at ``peak`` (and its parts) down to :data:`MAX_AMP`; 1 below it."""
    return MAX_AMP / peak if peak > MAX_AMP else 1.0
