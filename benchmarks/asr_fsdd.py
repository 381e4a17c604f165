"""ASR learning check on real speech (FSDD digit strings) and the QuartzNet 5x5 CPU step time.

    python benchmarks/asr_fsdd.py train [--fsdd ../shared/data/fsdd] [--work fsdd_asr_run] [--minutes 14]
    python benchmarks/asr_fsdd.py step-time [--steps 3]

``train`` builds the digit-string set (seeded), trains ``recipes/demo/quartznet_fsdd.yaml`` through
``audiosep fit`` and reports greedy WER of the best checkpoint (by val WER) on held-out takes of the
training speakers and on the unseen speaker; results go to ``WORK/results.json``. Two cores are used as
one compute thread plus one data-loading worker: on a shared machine two OpenMP threads wait on each
other at every barrier and the steps were several times slower.
``step-time`` times training steps of QuartzNet 5x5 at batch 16 x 10 s (16 kHz) on the CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torchmetrics.text import WordErrorRate

from audiosep.data.asr import read_manifest
from audiosep.data.audio import read_audio
from audiosep.data.fsdd import build_fsdd_asr
from audiosep.models.quartznet import quartznet_5x5
from audiosep.nn.features import LogMelFeatures
from audiosep.tasks.asr import ctc_loss
from audiosep.transcriber import Transcriber

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "demo" / "quartznet_fsdd.yaml"


def word_error_rate(transcriber: Transcriber, manifest: Path) -> float:
    """Greedy WER of ``transcriber`` over a manifest."""
    utterances = read_manifest(manifest)
    waves = []
    for utterance in utterances:
        waveform, rate = read_audio(utterance.audio_filepath)
        waves.append(transcriber.prepare(waveform, rate, utterance.audio_filepath))
    hypotheses = transcriber.transcribe(waves)
    references = [transcriber.tokenizer.normalize(u.text) for u in utterances]
    return float(WordErrorRate()(hypotheses, references))


def train(args: argparse.Namespace) -> dict:
    """Build the data, fit the demo recipe, evaluate the best checkpoint."""
    from audiosep.training_cli import run_lightning_cli

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    data = work / "data"
    if not (data / "unseen.jsonl").is_file():
        build_fsdd_asr(args.fsdd, data, seed=args.seed)
    argv = [
        "fit", "--config", str(RECIPE), f"--seed_everything={args.seed}",
        f"--trainer.default_root_dir={work}", f"--trainer.max_time=00:00:{args.minutes:02d}:00",
        "--trainer.enable_progress_bar=false",
        f"--data.train_manifest={data / 'train.jsonl'}", f"--data.val_manifest={data / 'val.jsonl'}",
        f"--data.test_manifest={data / 'test.jsonl'}", f"--data.num_workers={args.workers}",
    ]  # fmt: skip
    start = time.perf_counter()
    cli = run_lightning_cli(argv)
    train_seconds = time.perf_counter() - start
    best = cli.trainer.checkpoint_callback.best_model_path
    transcriber = Transcriber.from_checkpoint(best, batch_size=32)
    results = {
        "checkpoint": best,
        "params": sum(p.numel() for p in transcriber.model.parameters()),
        "train_wall_s": round(train_seconds, 1),
        "epochs": cli.trainer.current_epoch,
        "steps": cli.trainer.global_step,
        "threads": args.threads,
        "workers": args.workers,
        "wer_heldout_takes": word_error_rate(transcriber, data / "test.jsonl"),
        "wer_unseen_speaker": word_error_rate(transcriber, data / "unseen.jsonl"),
    }
    (work / "results.json").write_text(json.dumps(results, indent=2))
    return results


def step_time(args: argparse.Namespace) -> dict:
    """Seconds per training step (front end + 5x5 forward + CTC + backward + AdamW) at 16 x 10 s."""
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    features, model = LogMelFeatures(), quartznet_5x5()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    waves, lengths = 0.1 * torch.randn(16, 160000), torch.full((16,), 160000)
    targets = [list(torch.randint(0, 28, (150,)).tolist()) for _ in range(16)]
    timings = []
    for _ in range(args.steps + 1):  # the first step warms up allocators and oneDNN primitives
        begin = time.perf_counter()
        log_probs, out_lengths = model(*features(waves, lengths))
        loss = ctc_loss(log_probs, out_lengths, targets, blank=28)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        timings.append(time.perf_counter() - begin)
    return {
        "threads": args.threads,
        "step_s": [round(t, 2) for t in timings[1:]],
        "min_step_s": round(min(timings[1:]), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("train", help="FSDD learning check")
    fit.add_argument("--fsdd", default=str(ROOT.parent / "shared" / "data" / "fsdd"))
    fit.add_argument("--work", default="fsdd_asr_run")
    fit.add_argument("--minutes", type=int, default=14, help="training time limit (max_time)")
    fit.add_argument("--threads", type=int, default=1)
    fit.add_argument("--workers", type=int, default=1)
    fit.add_argument("--seed", type=int, default=0)
    steps = sub.add_parser("step-time", help="QuartzNet 5x5 training step at 16 x 10 s")
    steps.add_argument("--steps", type=int, default=3)
    steps.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(train(args) if args.command == "train" else step_time(args), indent=2))


if __name__ == "__main__":
    main()
