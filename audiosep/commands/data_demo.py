"""``audiosep data demo``: synthesise a small LibriMix-shaped 2-speaker set with transcripts."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from audiosep.commands.inputs import check_output_folder
from audiosep.data.prep.demo_config import SPLITS, DemoSetConfig

_DEFAULTS = DemoSetConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``audiosep data demo``."""
    parser.add_argument("--out", required=True, type=Path, help="folder to write the set into")
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="random seed (default: %(default)s)")
    parser.add_argument("--num-train", type=int, default=_DEFAULTS.num_train,
                        help="training mixtures (default: %(default)s)")
    parser.add_argument("--num-dev", type=int, default=_DEFAULTS.num_dev,
                        help="validation mixtures (default: %(default)s)")
    parser.add_argument("--num-test", type=int, default=_DEFAULTS.num_test, help="test mixtures (default: %(default)s)")
    parser.add_argument("--sample-rate", type=int, default=_DEFAULTS.sample_rate,
                        help="sample rate in Hz (default: %(default)s)")
    parser.add_argument("--num-speakers", type=int, default=_DEFAULTS.num_speakers,
                        help="synthetic speakers in all, 80/10/10 %% over train/dev/test (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="synthesis worker processes (default: CPU count up to 4; 0 = none)")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


def run(args: argparse.Namespace) -> int:
    """Build the set (or find it already built) and print where everything is."""
    from audiosep.data.prep.demo_set import build_demo_set

    check_output_folder(args.out, "--out")
    start = time.perf_counter()
    out_dir = build_demo_set(
        args.out, seed=args.seed, num_train=args.num_train, num_dev=args.num_dev, num_test=args.num_test,
        sample_rate=args.sample_rate, num_speakers=args.num_speakers, num_workers=args.workers,
        progress=not args.no_progress,
    )
    librimix = out_dir / "Libri2Mix" / f"wav{args.sample_rate // 1000}k" / "min"
    print(f"demo set ready in {out_dir} ({time.perf_counter() - start:.1f} s)")
    print(f"  mixtures:  {librimix}/{{{','.join(SPLITS)}}}/{{mix_clean,s1,s2}}/")
    print(f"  metadata:  {librimix / 'metadata'}/mixture_<split>_mix_clean.csv")
    print(f"  speech:    {out_dir / 'speech'}/<split>/<speaker>/<utterance>.wav")
    print(f"  manifests: {out_dir / 'manifests'}/{{{','.join(SPLITS)}}}.jsonl")
    print(f"  use it as: LibriMixDataModule(root={out_dir}, train_split=train-100, ...)")
    return 0
