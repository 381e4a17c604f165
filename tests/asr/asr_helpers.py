"""Helpers shared by the ASR tests: tone "utterances", a tiny QuartzNet spec, BatchNorm statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile
import torch

# [channels, kernel_size, repeat, stride, dilation, residual, separable]: C1 (stride 2), B1, C2, C3.
TINY_BLOCKS = [[16, 5, 1, 2, 1, False], [16, 7, 2], [16, 9, 1, 1, 2, False], [32, 1, 1, 1, 1, False, False]]
TEXTS = ["a cab", "bad", "a dab", "cab a", "dad", "abc"]


def speechlike(num_samples: int, sample_rate: int, seed: int) -> np.ndarray:
    """A few harmonics of a gliding f0 under a syllable-rate envelope, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / sample_rate
    f0 = rng.uniform(100, 220) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(1, 3) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * np.sin(2 * np.pi * 3 * t) ** 2
    return (0.2 * wave + 0.003 * rng.standard_normal(num_samples)).astype(np.float32)


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters (eval-mode tests)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                size = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(size, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(size, generator=generator))
                module.weight.copy_(1 + 0.1 * torch.randn(size, generator=generator))
                module.bias.copy_(0.1 * torch.randn(size, generator=generator))


def write_tiny_asr(root: Path, sample_rate: int = 16000) -> dict[str, Path]:
    """Six 0.3-0.5 s clips with short transcripts; train/val/test manifests (relative paths)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, text in enumerate(TEXTS):
        num_samples = int(sample_rate * (0.3 + 0.04 * index))
        name = f"clip{index}.wav"
        soundfile.write(root / name, speechlike(num_samples, sample_rate, index), sample_rate)
        rows.append({"audio_filepath": name, "duration": num_samples / sample_rate, "text": text})
    manifests = {}
    for split, chosen in {"train": rows[:4], "val": rows[4:], "test": rows[4:]}.items():
        manifests[split] = root / f"{split}.jsonl"
        manifests[split].write_text("".join(json.dumps(row) + "\n" for row in chosen))
    return manifests
