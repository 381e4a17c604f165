"""What determines a demo set (:mod:`audiosep.data.prep.demo_set`), without the heavy imports.

``audiosep data demo`` reads its option defaults from here, so its ``--help`` loads no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from audiosep.errors import UserError

SPLITS = ("train-100", "dev", "test")


@dataclass(frozen=True)
class DemoSetConfig:
    """Everything that determines the bytes of a demo set (stored in ``demo_set.json``)."""

    seed: int = 0
    num_train: int = 2000
    num_dev: int = 150
    num_test: int = 100
    sample_rate: int = 8000
    num_speakers: int = 250
    min_words: int = 8
    max_words: int = 16

    def mixtures(self, split: str) -> int:
        return {"train-100": self.num_train, "dev": self.num_dev, "test": self.num_test}[split]

    def validate(self) -> None:
        """Raises UserError on sizes that cannot give a valid set."""
        for name in ("num_train", "num_dev", "num_test"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_speakers < 6:
            raise UserError(f"num_speakers must be at least 6 (2 per split), got {self.num_speakers}")
        if not 8000 <= self.sample_rate <= 48000 or self.sample_rate % 1000:
            raise UserError(f"sample_rate must be a multiple of 1000 Hz from 8000 to 48000, got {self.sample_rate}")
        if not 3 <= self.min_words <= self.max_words:
            raise UserError(f"need 3 <= min_words <= max_words, got {self.min_words}, {self.max_words}")
