"""Shared fixtures: tiny on-the-fly corpora in the official layouts (no downloads)."""

from __future__ import annotations

import os

# One OpenMP thread for the whole test session, set before torch loads: tests use tiny tensors,
# and a forked worker (e.g. the demo-set builder's pool) deadlocks in torch ops once the parent has
# started an OpenMP thread pool.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Recipes may name only audiosep's closed list of classes; the tests' own probe callbacks are added
# the way a user adds theirs (inherited by the DDP worker processes the tests start).
os.environ["AUDIOSEP_IMPORT_ALLOWLIST"] = "training_probes"

import csv  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from signal_helpers import harmonic_tone

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY_SPLITS = {"train-360": 6, "train-100": 4, "dev": 3, "test": 3}


def write_tiny_librimix(root: Path, n_src: int = 2, sample_rate: int = 8000, seed: int = 0) -> Path:
    """Write a tiny ``Libri{n}Mix/wav8k/min`` tree with official folder names and metadata CSVs."""
    rng = np.random.default_rng(seed)
    base = root / f"Libri{n_src}Mix" / f"wav{sample_rate // 1000}k" / "min"
    (base / "metadata").mkdir(parents=True, exist_ok=True)
    for split, count in TINY_SPLITS.items():
        rows = {"mix_clean": [], "mix_both": []}
        for index in range(count):
            mixture_id = f"{100 + index}-1-{index:04d}_{200 + index}-2-{index:04d}"
            length = int(sample_rate * rng.uniform(0.4, 0.7))
            sources = [harmonic_tone(rng, length, sample_rate) for _ in range(n_src)]
            noise = (0.02 * rng.standard_normal(length)).astype(np.float32)
            mixtures = {"mix_clean": sum(sources), "mix_both": sum(sources) + noise}
            folders = {f"s{i + 1}": s for i, s in enumerate(sources)} | {"noise": noise} | mixtures
            for folder, audio in folders.items():
                (base / split / folder).mkdir(parents=True, exist_ok=True)
                sf.write(base / split / folder / f"{mixture_id}.wav", audio, sample_rate, subtype="FLOAT")
            for mix in rows:
                row = {"mixture_ID": mixture_id, "mixture_path": str(base / split / mix / f"{mixture_id}.wav")}
                row |= {f"source_{i + 1}_path": str(base / split / f"s{i + 1}" / f"{mixture_id}.wav") for i in range(n_src)}
                if mix == "mix_both":
                    row["noise_path"] = str(base / split / "noise" / f"{mixture_id}.wav")
                rows[mix].append(row | {"length": length})
        for mix, mix_rows in rows.items():
            with (base / "metadata" / f"mixture_{split}_{mix}.csv").open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(mix_rows[0]))
                writer.writeheader()
                writer.writerows(mix_rows)
    return root / f"Libri{n_src}Mix"


@pytest.fixture
def make_tiny_librimix() -> Callable[..., Path]:
    """:func:`write_tiny_librimix` for tests that need several data sets (``conftest`` is not importable
    by that name from every test folder: ``tests/asr`` has its own)."""
    return write_tiny_librimix


@pytest.fixture(scope="session")
def tiny_librimix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a tiny Libri2Mix (8 kHz, min) with train-360/train-100/dev/test splits."""
    return write_tiny_librimix(tmp_path_factory.mktemp("librimix"))


@pytest.fixture(scope="session")
def fsdd_dir() -> Path:
    """The Free Spoken Digit Dataset in ../shared/data (skips when absent)."""
    path = SHARED_DATA / "fsdd"
    if not (path / "manifest.csv").is_file():
        pytest.skip(f"real speech not found at {path} (see ../shared/data/README.md)")
    return path
