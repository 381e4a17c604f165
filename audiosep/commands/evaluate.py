"""``audiosep evaluate``: SI-SNRi, SDRi (PESQ, STOI) of a separator on a LibriMix split, and the WER cascade.

Example (the demo set, no LibriMix needed)::

    audiosep evaluate --ckpt demo_out/model.ckpt --data demo_out/data --out-dir eval_out
    audiosep evaluate --ckpt sep.ckpt --data Libri2Mix --asr asr.ckpt --librispeech LibriSpeech
"""

from __future__ import annotations

import argparse
from pathlib import Path

from audiosep.commands.inputs import check_device
from audiosep.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``audiosep evaluate``."""
    parser.add_argument("--ckpt", required=True, help="separator: audiosep model file or Lightning .ckpt")
    parser.add_argument("--data", required=True, help="LibriMix root (Libri2Mix, its parent, or wav8k/min)")
    parser.add_argument("--split", default="test", help="split to score (default: %(default)s)")
    parser.add_argument("--task", default="sep_clean", choices=["sep_clean", "sep_noisy"],
                        help="mixtures to separate (default: %(default)s)")
    parser.add_argument("--mode", default="min", choices=["min", "max"], help="LibriMix mode (default: %(default)s)")
    parser.add_argument("--asr", default=None, help="recogniser checkpoint: adds WER/CER of mixture, separated, clean")
    parser.add_argument("--librispeech", default=None,
                        help="reference transcripts: LibriSpeech root or .jsonl manifest(s) "
                             "(default with --asr: DATA/manifests when present, as in the demo set)")
    parser.add_argument("--out-dir", default="eval_out", type=Path, help="report folder (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N mixtures")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--dtype", choices=["fp32", "int8"], default="fp32",
                        help="separator precision; int8: dynamic int8 on CPU (default: %(default)s)")
    parser.add_argument("--restart", action="store_true", help="discard rows of an interrupted run in --out-dir")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _transcript_source(args: argparse.Namespace) -> str:
    """Where the reference transcripts come from (explicit, else the demo set's manifests)."""
    if args.librispeech:
        return args.librispeech
    demo_manifests = Path(args.data) / "manifests"
    if demo_manifests.is_dir():
        return str(demo_manifests)
    raise UserError("--asr needs --librispeech (the LibriSpeech root or a .jsonl manifest with the transcripts)")


def run(args: argparse.Namespace) -> int:
    """Load the models and the split, score, write the reports, print the summary."""
    from audiosep.checkpoint import CheckpointError
    from audiosep.data.librimix import LibriMixDataset, metadata_csv, resolve_librimix_dir
    from audiosep.eval_report import rate_text
    from audiosep.evaluation import RunIdentity, evaluate, load_transcripts
    from audiosep.inference import SeparationError, Separator
    from audiosep.io import file_sha256, source_digest
    from audiosep.metrics import SILENT_SOURCE_DB
    from audiosep.transcriber import Transcriber

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    check_device(args.device)
    try:
        separator = Separator.from_checkpoint(args.ckpt, device=args.device, dtype=args.dtype)
        separator.fit_chunk_to_available_memory()  # before any mixture: a model too large for this machine
        transcriber = Transcriber.from_checkpoint(args.asr, device=args.device) if args.asr else None
    except SeparationError as err:  # the model, not a mixture
        raise UserError(f"{args.ckpt}: {err}") from err
    except (CheckpointError, ValueError) as err:
        raise UserError(str(err)) from err
    try:
        if transcriber is not None:
            transcriber.fit_to_available_memory()
    except ValueError as err:
        raise UserError(f"{args.asr}: {err}") from err
    transcripts = load_transcripts(_transcript_source(args)) if transcriber else None
    base = resolve_librimix_dir(args.data, separator.num_sources, separator.sample_rate, args.mode)
    split_dir = base / args.split
    if not split_dir.is_dir():
        raise UserError(f"{split_dir}: split folder not found")
    metadata = metadata_csv(base, args.split, args.task)
    dataset = LibriMixDataset(
        split_dir, metadata, n_src=separator.num_sources, task=args.task, sample_rate=separator.sample_rate,
    )
    identity = RunIdentity(
        separator_sha256=file_sha256(args.ckpt),
        recogniser_sha256=file_sha256(args.asr) if args.asr else None,
        data_dir=str(base.resolve()), split=args.split, task=args.task, dtype=args.dtype,
        metadata_sha256=file_sha256(metadata), audiosep_code=source_digest(),
    )
    result = evaluate(
        separator, dataset, args.out_dir, identity, transcriber, transcripts, limit=args.limit,
        restart=args.restart, progress=not args.no_progress, plots=not args.no_plots,
    )
    summary = result.summary
    means = ", ".join(f"{k} {v:.2f}" for k, v in summary["mean"].items())
    print(f"{summary['utterances']} mixtures ({summary['scored_this_run']} scored now): {means}")
    if summary["silent_estimates"]:
        print(f"warning: {summary['silent_estimates']} estimated source(s) were silent, each scored {SILENT_SOURCE_DB:g} dB")
    for condition, rates in summary["asr"].items():
        print(f"  WER {condition}: {rate_text(rates['wer'])} %  (CER {rate_text(rates['cer'])} %)")
    print(f"wrote {', '.join(str(p) for p in result.files)}")
    return 0
