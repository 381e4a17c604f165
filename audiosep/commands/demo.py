"""``audiosep demo``: the whole loop on built-in data, on a laptop CPU, in minutes.

Synthesises a small LibriMix-shaped set, trains ``recipes/demo/convtasnet_tiny.yaml``, separates
held-out mixtures, and reports SI-SNRi before and after training. Writes to ``--out``:
``model.ckpt`` (audiosep model file), ``separated/*.wav``, ``spectrograms.png``, ``report.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from audiosep.commands.inputs import check_output_folder
from audiosep.data.prep.demo_config import DemoSetConfig
from audiosep.errors import UserError

RECIPE = "demo/convtasnet_tiny.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data and training")
    parser.add_argument("--max-time", default=None, help="training time limit DD:HH:MM:SS (recipe default: 6 min)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (quick checks)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    sizes = parser.add_argument_group("demo data size (mixtures per split)")
    sizes.add_argument("--num-train", type=int, default=2000)
    sizes.add_argument("--num-dev", type=int, default=150)
    sizes.add_argument("--num-test", type=int, default=100)


MAX_TIME = re.compile(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}")  # Lightning's DD:HH:MM:SS


def check_arguments(args: argparse.Namespace) -> None:
    """One-line errors for values the demo cannot use, before any data is built."""
    for flag, value in (("--threads", args.threads), ("--max-steps", args.max_steps)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if args.max_time is not None and not MAX_TIME.fullmatch(args.max_time):
        raise UserError(f"--max-time must be DD:HH:MM:SS (e.g. 00:00:06:00), got {args.max_time!r}")
    if args.max_time is not None and not any(int(part) for part in args.max_time.split(":")):
        raise UserError("--max-time must be longer than 00:00:00:00 (no step would be trained)")
    DemoSetConfig(seed=args.seed, num_train=args.num_train, num_dev=args.num_dev, num_test=args.num_test).validate()
    check_output_folder(args.out, "--out")


def run(args: argparse.Namespace) -> int:
    import torch

    from audiosep.io import folder_lock

    check_arguments(args)
    started = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    with folder_lock(out, "--out"):  # a second demo there trained into the same checkpoints and wrote the same files
        return _run_locked(args, out, started)


def _run_locked(args: argparse.Namespace, out: Path, started: float) -> int:
    """:func:`run` in its locked ``--out`` folder."""
    from audiosep.checkpoint import save_model
    from audiosep.data.prep.demo_set import build_demo_set
    from audiosep.demo_report import ValidationHistory, evaluate_separator, plot_spectrograms, write_examples
    from audiosep.inference import Separator
    from audiosep.io import atomic_write_text
    from audiosep.training_cli import (
        checked_last_checkpoint,
        claim_training_folder,
        packaged_recipe,
        run_lightning_cli,
    )

    claim_training_folder(out / "train", {"seed": args.seed, "num_train": args.num_train, "num_dev": args.num_dev,
                                          "num_test": args.num_test})  # fmt: skip
    print(f"[1/4] building the demo data set in {out / 'data'}")
    build_demo_set(
        out / "data", seed=args.seed, num_train=args.num_train, num_dev=args.num_dev, num_test=args.num_test
    )
    recipe = packaged_recipe(RECIPE)
    overrides = [
        "fit", "--config", str(recipe), "--data.root", str(out / "data"),
        "--trainer.default_root_dir", str(out / "train"), "--seed_everything", str(args.seed),
    ]
    if args.max_time:
        overrides += ["--trainer.max_time", args.max_time]
    if args.max_steps:
        overrides += [f"--trainer.max_steps={args.max_steps}", "--trainer.val_check_interval=1.0"]
    cli = run_lightning_cli(overrides[1:], run=False)
    test_set = cli.datamodule.split_dataset("test", None)
    sample_rate = cli.datamodule.sample_rate
    before = evaluate_separator(Separator(cli.model.model, sample_rate), test_set)
    print(f"[2/4] untrained model on {len(test_set)} held-out mixtures: SI-SNRi {before:.2f} dB; training")
    history = ValidationHistory()
    cli.trainer.callbacks.append(history)
    # One checkpoint folder for every run of these settings: Lightning keeps the best score of a resumed run
    # only when the folder is the same (each run's own version_N folder made a resumed run's first,
    # possibly worse, validation the best, and the model shipped was that one)
    cli.trainer.checkpoint_callback.dirpath = str(out / "train" / "checkpoints")
    resume = checked_last_checkpoint(out / "train", cli.model, cli.datamodule,
                                     f"delete {out / 'train'} to train the demo from its start")  # fmt: skip
    if resume is not None:  # a killed or finished earlier demo of these settings: go on from its last step
        print(f"      resuming from {resume}")
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=None if resume is None else str(resume))
    best = cli.trainer.checkpoint_callback.best_model_path or cli.trainer.checkpoint_callback.last_model_path
    separator = Separator.from_checkpoint(best)
    save_model(separator.model, out / "model.ckpt", {"sample_rate": sample_rate})
    print("[3/4] separating held-out mixtures with the best checkpoint")
    after = evaluate_separator(separator, test_set)
    examples = write_examples(separator, test_set, out / "separated", count=3)
    plot_spectrograms(examples[0], sample_rate, out / "spectrograms.png")
    report = {
        "si_snri_before_db": before,
        "si_snri_after_db": after,
        "best_val_si_snri_db": max((h["val_si_snri"] for h in history.rows), default=None),
        "validation_curve": history.rows,
        "best_checkpoint": best,
        "wall_time_s": round(time.monotonic() - started, 1),  # this run only
        "training_time_s": round(history.elapsed(), 1),  # every run's training, a resumed one's included
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    print("[4/4] validation SI-SNRi per epoch: " + ", ".join(f"{h['val_si_snri']:.1f}" for h in history.rows))
    print(f"SI-SNRi on held-out test mixtures: {before:.2f} dB before training, {after:.2f} dB after")
    print(f"wrote {out / 'model.ckpt'}, {out / 'separated'}, {out / 'spectrograms.png'}, {out / 'report.json'}")
    print(f"try: audiosep infer --ckpt {out / 'model.ckpt'} your_mixture.wav")
    return 0
