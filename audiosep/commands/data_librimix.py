"""``audiosep data librimix``: LibriMix audio from the official metadata (or freshly drawn metadata)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from audiosep.commands.inputs import check_output_folder
from audiosep.data.mixing import MIX_TYPES
from audiosep.errors import UserError
from audiosep.io import atomic_write_text, read_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--librispeech", required=True, help="the LibriSpeech folder (holding train-clean-100/ etc.)"
    )
    parser.add_argument(
        "--wham", help="the wham_noise folder (holding tr/ cv/ tt/); not needed for mix_clean only"
    )
    parser.add_argument(
        "--metadata",
        required=True,
        help="folder of libri{n}mix_<subset>.csv (or its parent holding Libri{n}Mix/); "
        "with --new-metadata, where the new CSVs are written",
    )
    parser.add_argument(
        "--out", required=True, help="output root; audio goes to OUT/Libri{n}Mix/wav{8,16}k/MODE/"
    )
    parser.add_argument(
        "--n-src", type=int, default=2, help="speakers per mixture (2 or 3 for the official CSVs)"
    )
    parser.add_argument("--sample-rate", type=int, default=8000, choices=(8000, 16000))
    parser.add_argument(
        "--mode", default="min", choices=("min", "max"), help="truncate to the shortest / pad"
    )
    parser.add_argument(
        "--types", default=",".join(MIX_TYPES), help="comma-separated: " + ",".join(MIX_TYPES)
    )
    parser.add_argument(
        "--splits", help="comma-separated subsets (dev-clean or dev); default: every CSV found"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--limit", type=int, help="only the first N rows of each CSV (trial runs)")
    new = parser.add_argument_group("fresh metadata (LibriMix recipe, for any LibriSpeech-shaped corpus)")
    new.add_argument(
        "--new-metadata",
        action="store_true",
        help="draw libri{n}mix_<subset>.csv for each --splits subset into --metadata first "
        "(a CSV already there is reused; one drawn with other options is refused), then generate from it",
    )
    new.add_argument("--seed", type=int, default=0, help="seed of the draws")
    new.add_argument(
        "--num-mixtures",
        type=int,
        help="mixtures per subset (default: train uses each utterance once, others 3000)",
    )
    new.add_argument("--min-seconds", type=float, default=3.0, help="shortest utterance used")


def _split_list(value: str | None) -> list[str] | None:
    return None if value is None else [item.strip() for item in value.split(",") if item.strip()]


def _existing_dir(value: str | None, what: str) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise UserError(f"{path}: {what} folder not found")
    return path


def draw_missing_metadata(args: argparse.Namespace, splits: list[str] | None) -> None:
    """``--new-metadata``: draw the CSV of every requested subset that is not there yet."""
    from audiosep.data.prep.librimix_recipe import draw_metadata

    if not splits:
        raise UserError(
            "--new-metadata needs --splits (LibriSpeech subset folders, e.g. train-clean-100,dev-clean)"
        )
    record = draw_record(args)
    for subset in splits:
        csv_path = Path(args.metadata).expanduser() / f"libri{args.n_src}mix_{subset}.csv"
        record_path = csv_path.with_name(f"{csv_path.name}.draw.json")
        if csv_path.is_file():
            check_same_draw(csv_path, record_path, record)
            print(f"{csv_path}: already drawn, reused")
            continue
        draw_metadata(
            args.librispeech,
            args.wham,
            subset,
            args.metadata,
            args.n_src,
            seed=args.seed,
            num_mixtures=args.num_mixtures,
            min_seconds=args.min_seconds,
            workers=args.workers,
        )
        atomic_write_text(record_path, json.dumps(record, indent=2))
        print(f"{csv_path}: drawn")


def draw_record(args: argparse.Namespace) -> dict[str, object]:
    """The options a drawn CSV depends on, kept beside it (``<csv>.draw.json``)."""
    corpora = {"librispeech": args.librispeech, "wham": args.wham}
    return {"seed": args.seed, "num_mixtures": args.num_mixtures, "min_seconds": args.min_seconds,
            **{key: None if value is None else os.path.abspath(os.path.expanduser(value)) for key, value in corpora.items()}}  # fmt: skip


def check_same_draw(csv_path: Path, record_path: Path, record: dict[str, object]) -> None:
    """Refuse to reuse a CSV drawn with other options than these (a rerun with another --seed or --num-mixtures
    kept the old draw and exited 0; reviewer). A CSV without a record (the official one, an older draw) is
    reused as it is."""
    kept = read_json(record_path) if record_path.is_file() else None
    if not isinstance(kept, dict):
        return
    changed = [f"--{key.replace('_', '-')} {kept.get(key)} -> {value}" for key, value in record.items() if kept.get(key) != value]
    if changed:
        raise UserError(f"{csv_path}: drawn with other options ({', '.join(changed)}); delete it (and its "
                        f"{record_path.name}) to draw again, or give another --metadata")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from audiosep.data.prep.librimix_generate import GenerationConfig, find_metadata_csvs, generate_split

    check_output_folder(args.out, "--out")
    if (Path(args.out).expanduser() / "demo_set.json").exists():  # both write Libri2Mix/wav8k/min there
        raise UserError(f"--out {args.out}: holds the demo set of `audiosep data demo`; give LibriMix its own folder")
    if args.n_src < 2:
        raise UserError(f"--n-src must be at least 2, got {args.n_src}")
    if args.limit is not None and args.limit < 1:  # rows[:-1] would silently drop the last row
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    config = GenerationConfig(
        librispeech_dir=_existing_dir(args.librispeech, "LibriSpeech"),
        wham_dir=_existing_dir(args.wham, "WHAM! noise"),
        out_dir=Path(args.out).expanduser() / f"Libri{args.n_src}Mix",
        n_src=args.n_src,
        sample_rate=args.sample_rate,
        mode=args.mode,
        types=tuple(_split_list(args.types) or ()),
    )
    splits = _split_list(args.splits)
    if args.new_metadata:
        draw_missing_metadata(args, splits)
    for csv_path in find_metadata_csvs(args.metadata, args.n_src, splits):
        report = generate_split(config, csv_path, limit=args.limit, workers=args.workers)
        rate = report.num_generated / report.seconds if report.seconds > 0 else 0.0
        print(
            f"{report.split}: {report.num_rows} mixtures in {config.mode_dir / report.split} "
            f"({report.num_generated} generated at {rate:.1f}/s, {report.num_resumed} already done)"
        )
        if report.num_clipped:
            print(
                f"{report.split}: warning: {report.num_clipped} mixture(s) exceed 1.0 and were clipped",
                file=sys.stderr,
            )
    print(f"done: pass --data.root {config.out_dir} to a LibriMix recipe")
    return 0
