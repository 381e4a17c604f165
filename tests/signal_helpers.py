"""Speech-like test signals, importable by tests and benchmarks (a module name no other folder uses)."""

from __future__ import annotations

import math

import numpy as np


def harmonic_tone(rng: np.random.Generator, num_samples: int, sample_rate: int) -> np.ndarray:
    """A voiced-speech stand-in: a few harmonics of a random, slowly gliding f0, plus a little noise."""
    t = np.arange(num_samples) / sample_rate
    f0 = rng.uniform(90, 260) * (1 + 0.1 * np.sin(2 * math.pi * rng.uniform(0.5, 3) * t))
    phase = 2 * math.pi * np.cumsum(f0) / sample_rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * math.pi * rng.uniform(1, 4) * t) ** 2
    return (0.2 * wave * envelope + 0.005 * rng.standard_normal(num_samples)).astype(np.float32)
