"""What a norm study trains (settings, presets, default norms): light, so ``audiosep --help`` stays fast.

:mod:`audiosep.norm_study` runs it; this module imports neither torch nor Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Study-sized configurations of presets (CPU minutes): name -> (registry preset, overrides).
STUDY_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny_sepformer_demo": (
        "tiny_sepformer_base",
        dict(
            encoder_channels=64, kernel_size=16, model_channels=64, num_blocks=1, num_intra_layers=2,
            num_inter_layers=2, num_heads=2, attention_channels=32, ffn_dim=128, chunk_size=100,
        ),
    ),
}  # fmt: skip
DEFAULT_NORMS = (
    "gLN", "cLN", "BN", "unified_norm", "power_norm", "rms_norm", "dyt", "elementwise_ln", "none",
)  # fmt: skip


@dataclass
class StudySettings:
    """What to train and how; every run of a study shares all of it but the norm and the seed."""

    data: str
    out: str
    model: str = "conv_tasnet_demo"
    norms: list[str] = field(default_factory=lambda: list(DEFAULT_NORMS))
    seeds: int = 1
    baseline_seeds: int = 2
    minutes: float | None = 3.0
    steps: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 4
    segment: float = 1.5
    lr: float = 2e-3
    evals: int = 8
    val_mixtures: int = 50
    warmup_fraction: float = 0.25
    rtf_seconds: float = 4.0
    progress: bool = True

    def seeds_of(self, norm: str) -> list[int]:
        """Seeds run for ``norm``: the first norm (the baseline) gets ``baseline_seeds`` to show the noise."""
        count = max(self.seeds, self.baseline_seeds) if norm == self.norms[0] else self.seeds
        return list(range(count))

    def fingerprint(self) -> dict[str, Any]:
        """The settings that must match for a finished run to be reused (``data`` resolved, as typed it varies).

        The data's contents, the thread count and the library versions are checked too, by
        :func:`audiosep.norm_study.run_conditions`: they are not settings but change the numbers.
        """
        keys = ("model", "overrides", "batch_size", "segment", "lr", "evals", "val_mixtures",
                "warmup_fraction", "rtf_seconds")  # fmt: skip
        return {"data": str(Path(self.data).resolve())} | {key: getattr(self, key) for key in keys}
