"""``audiosep data librispeech``: JSON-lines manifests from the official LibriSpeech layout."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

MAX_LISTED = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, help="the LibriSpeech folder (holding dev-clean/ etc.)")
    parser.add_argument(
        "--subsets", required=True, help="comma-separated subset folders, e.g. train-clean-100,dev-clean"
    )
    parser.add_argument("--out", required=True, help="folder for <subset>.jsonl (and <subset>.skipped.tsv)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="reader processes")
    parser.add_argument(
        "--headers-only",
        action="store_true",
        help="read file headers only (fast) instead of decoding every file (catches corrupt flacs)",
    )


SUBSET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a folder name: no separators, not . or ..


def subset_names(text: str) -> list[str]:
    """The ``--subsets`` folder names; ``UserError`` for none, or one that is not a plain folder name.

    Why: a name becomes ``<out>/<name>.jsonl``, so ``../x`` wrote outside ``--out`` and ``dev-clean/`` a
    hidden ``.jsonl`` inside a new folder.
    """
    from audiosep.errors import UserError

    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UserError(f"--subsets {text!r}: no subset named")
    bad = [name for name in names if not SUBSET_NAME.fullmatch(name)]
    if bad:
        raise UserError(f"--subsets: {bad[0]!r} is not a subset folder name (such as dev-clean)")
    return names


def run(args: argparse.Namespace) -> int:
    from audiosep.data.prep.librispeech_manifest import write_subset_manifest
    from audiosep.errors import UserError

    subsets = subset_names(args.subsets)
    if args.workers < 1:  # -3 ran as 1, silently
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    missing = [subset for subset in subsets if not (Path(args.root).expanduser() / subset).is_dir()]
    if missing:  # before any subset is decoded and written, not after the first ones
        raise UserError(f"{Path(args.root).expanduser() / missing[0]}: LibriSpeech subset folder not found")
    for subset in subsets:
        report = write_subset_manifest(
            args.root, subset, args.out, workers=args.workers, decode=not args.headers_only
        )
        if report.num_written:
            print(f"{subset}: {report.num_written} utterances -> {report.manifest}")
        if report.skipped:
            print(
                f"{subset}: skipped {len(report.skipped)} file(s), listed in "
                f"{report.manifest.with_name(f'{subset}.skipped.tsv')}:",
                file=sys.stderr,
            )
            for path, reason in report.skipped[:MAX_LISTED]:
                print(f"  {path}: {reason}", file=sys.stderr)
            if len(report.skipped) > MAX_LISTED:
                print(f"  ... and {len(report.skipped) - MAX_LISTED} more", file=sys.stderr)
        if not report.num_written:  # nothing usable (say an empty .trans.txt): it exited 0 with an empty .jsonl
            raise UserError(f"{Path(args.root).expanduser() / subset}: no utterances written "
                            f"(all {len(report.skipped)} file(s) skipped, listed above)")  # fmt: skip
    return 0
