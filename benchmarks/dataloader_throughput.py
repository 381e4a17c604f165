"""Data throughput: LibriMix generation (mixtures/s) and training dataloaders (examples/s).

Fabricates LibriSpeech/WHAM! inputs of the real lengths named by the first ``--rows`` rows of the
official Libri2Mix dev metadata (../shared/data/librimix_metadata), then times:

1. ``generate_split`` (8 kHz, min, mix_clean+mix_both+mix_single) with ``--workers`` processes;
2. the dynamic-mixing training loader (``--workers`` DataLoader workers, 3 s segments, noise on),
   after its one-off cache build (timed separately);
3. the fixed LibriMix training loader over the split generated in 1, for comparison.

Usage: ``python benchmarks/dataloader_throughput.py [--rows 40] [--workers 2] [--batches 60]``.
Prints one JSON object. Timings depend on the machine and its load: compare within one run.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from audiosep.data.dynamic_mixing import DynamicMixingDataset, build_index, dynamic_mixing_loader
from audiosep.data.librimix import LibriMixDataset, collate_padded
from audiosep.data.prep.librimix_generate import GenerationConfig, generate_split

METADATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "librimix_metadata" / "metadata"


def fabricate_inputs(root: Path, rows: int, seed: int = 0) -> Path:
    """Write the inputs of the first ``rows`` dev rows at their real lengths; returns the trimmed CSV."""
    with (METADATA / "LibriSpeech" / "dev-clean.csv").open() as handle:
        speech = {r["origin_path"]: int(r["length"]) for r in csv.DictReader(handle)}
    with (METADATA / "Wham_noise" / "dev.csv").open() as handle:
        noise = {r["origin_path"]: int(r["length"]) for r in csv.DictReader(handle)}
    with (METADATA / "Libri2Mix" / "libri2mix_dev-clean.csv").open() as handle:
        reader = csv.DictReader(handle)
        header, selected = reader.fieldnames, [row for _, row in zip(range(rows), reader, strict=False)]
    rng = np.random.default_rng(seed)
    for row in selected:
        for key, lengths, folder, channels in [
            ("source_1_path", speech, "LibriSpeech", 1),
            ("source_2_path", speech, "LibriSpeech", 1),
            ("noise_path", noise, "wham_noise", 2),
        ]:
            path = root / folder / row[key]
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                shape = (lengths[row[key]], channels) if channels > 1 else lengths[row[key]]
                sf.write(path, np.clip(0.03 * rng.standard_normal(shape), -1, 1), 16000, subtype="PCM_16")
    metadata = root / "metadata" / "libri2mix_dev-clean.csv"
    metadata.parent.mkdir(parents=True)
    with metadata.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(selected)
    return metadata


def examples_per_second(loader, batches: int, warmup: int = 3) -> float:
    """Examples/s over ``batches`` batches after ``warmup`` (worker start-up excluded)."""
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    start, count = time.perf_counter(), 0
    for _ in range(batches):
        count += len(next(iterator)[2])
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40, help="official dev rows to fabricate and generate")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--segment", type=float, default=3.0)
    args = parser.parse_args()
    if not METADATA.is_dir():
        raise SystemExit(f"official metadata not found at {METADATA}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        metadata = fabricate_inputs(root, args.rows)
        config = GenerationConfig(
            root / "LibriSpeech", root / "wham_noise", root / "out" / "Libri2Mix", 2, 8000, "min",
            ("mix_clean", "mix_both", "mix_single"),
        )  # fmt: skip
        report = generate_split(config, metadata, workers=args.workers)
        start = time.perf_counter()
        speech = build_index(root / "LibriSpeech", "dev-clean", 8000, root / "cache", True, args.workers)
        noises = build_index(root / "wham_noise", "cv", 8000, root / "cache", False, args.workers)
        cache_seconds = time.perf_counter() - start
        dynamic = DynamicMixingDataset(speech, 2, 8000, args.segment, noises=noises, num_examples=10**6)
        dm_loader = dynamic_mixing_loader(dynamic, args.batch_size, args.workers, collate_padded)
        split = config.mode_dir / "dev"
        fixed = LibriMixDataset(
            split, config.mode_dir / "metadata" / "mixture_dev_mix_clean.csv", segment=args.segment
        )
        fixed_loader = _fixed_loader(fixed, args)
        result = {
            "generation_mixtures_per_s": report.num_generated / report.seconds,
            "generation_rows": report.num_generated,
            "dm_cache_build_s": cache_seconds,
            "dm_cache_files": len(speech) + len(noises),
            "dm_examples_per_s": examples_per_second(dm_loader, args.batches),
            "fixed_librimix_examples_per_s": examples_per_second(
                fixed_loader, min(args.batches, len(fixed) // args.batch_size - 4)
            ),
            "workers": args.workers,
            "batch_size": args.batch_size,
            "segment_s": args.segment,
        }
    print(json.dumps(result, indent=2))


def _fixed_loader(dataset: LibriMixDataset, args: argparse.Namespace):
    from torch.utils.data import DataLoader

    return DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, collate_fn=collate_padded
    )


if __name__ == "__main__":
    main()
