"""SI-SNRi of a separation checkpoint on real-speech two-speaker mixtures built from FSDD.

Why: the demo model trains on synthetic voices; this measures how far it transfers to human speech.
Utterances are 3-7 spoken digits of one speaker (RMS-normalised, since FSDD's speakers differ by
~22 dB); each mixture pairs two different speakers with a relative gain uniform in +-5 dB and is
truncated to the shorter utterance (LibriMix "min").

    python benchmarks/real_speech_separation.py --ckpt demo_out/model.ckpt [--fsdd ../shared/data/fsdd]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from audiosep.data.fsdd import read_fsdd, speaker_utterance
from audiosep.demo_report import evaluate_separator
from audiosep.inference import Separator

DEFAULT_FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd"


def fsdd_mixtures(fsdd_root: Path, count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor, str]]:
    """``count`` items ``(mixture[T], sources[2, T], id)`` of two different FSDD speakers."""
    rng = random.Random(seed)
    by_speaker: dict[str, list] = {}
    for recording in read_fsdd(fsdd_root):
        by_speaker.setdefault(recording.speaker, []).append(recording)
    speakers = sorted(by_speaker)
    items = []
    for index in range(count):
        pair = rng.sample(speakers, 2)
        sources = []
        for speaker in pair:
            parts = rng.sample(by_speaker[speaker], rng.randint(3, 7))
            audio, _ = speaker_utterance(parts, rng, max_pause=0.15)
            sources.append(torch.from_numpy(audio))
        length = min(s.shape[0] for s in sources)
        gain_db = rng.uniform(-5.0, 5.0)
        stacked = torch.stack([sources[0][:length] * 10 ** (gain_db / 20), sources[1][:length]])
        items.append((stacked.sum(0), stacked, f"{pair[0]}_{pair[1]}_{index}"))
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--fsdd", type=Path, default=DEFAULT_FSDD)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    separator = Separator.from_checkpoint(args.ckpt)
    items = fsdd_mixtures(args.fsdd, args.count, args.seed)
    score = evaluate_separator(separator, items)
    print(json.dumps({"checkpoint": args.ckpt, "mixtures": len(items), "si_snri_db": round(score, 2)}))


if __name__ == "__main__":
    main()
