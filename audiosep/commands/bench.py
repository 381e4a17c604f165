"""``audiosep bench``: cost of models per backend; ``audiosep bench sweep``: the Conv-TasNet X/R/H sweep.

    audiosep bench --models conv_tasnet_base --lengths 1,4,16 --device cpu --peers
    audiosep bench --ckpt pruned.ckpt --backends eager,prepared,onnxruntime --dtypes fp32,bf16
    audiosep bench sweep --base conv_tasnet_demo --seconds 4 [--train-minutes 3 --data DIR]

Prints a markdown table and writes JSON, CSV and PNG plots to ``--out-dir`` (schema in the README).
Heavy imports (torch, the models) happen in :func:`run`, so that ``audiosep --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

from audiosep.commands.inputs import check_device, check_output_folder
from audiosep.errors import UserError

BACKENDS = ("eager", "prepared", "int8", "compile", "torchscript", "onnxruntime")  # audiosep.bench.backends.BACKENDS
DEFAULT_BACKENDS = ("eager", "prepared", "torchscript", "onnxruntime")  # compile only when asked: it is slow
DTYPES = ("fp32", "bf16", "fp16")
SWEEP_BASES = ("conv_tasnet_demo", "conv_tasnet_base")


def _list_of(kind: Callable[[str], object], choices: tuple[str, ...] | None = None) -> Callable[[str], list]:
    """An argparse type: a comma-separated list of ``kind`` (from ``choices``, when given)."""

    def parse(text: str) -> list:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        try:
            values = [kind(item) for item in items]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__}s, got {text!r}"
            ) from None
        bad = [v for v in values if choices is not None and v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(map(str, bad))}; valid: {', '.join(choices)}"
            )
        return values

    return parse


def _backends(text: str) -> list[str]:
    return list(BACKENDS) if text == "all" else _list_of(str, BACKENDS)(text)


def _common(parser: argparse.ArgumentParser, out_dir: str, budget: float) -> None:
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's, i.e. OMP_NUM_THREADS or all cores)"
    )
    parser.add_argument(
        "--repeats", type=int, help="timed rounds per case (default: adaptive, see --time-budget)"
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=budget,
        help="adaptive repeats: seconds of timed rounds per case, 3..30 rounds (default: %(default)s)",
    )
    parser.add_argument(
        "--out-dir", default=out_dir, help="folder for JSON, CSV and PNG (default: %(default)s)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``audiosep bench`` and of its ``sweep`` mode."""
    parser.add_argument(
        "--models",
        type=_list_of(str),
        default=[],
        metavar="NAME[,NAME]",
        help="registry presets (see --list), comma-separated",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="[MODEL.]KEY=VALUE",
        help="constructor override of the presets (YAML value: 256, [12, 7], cLN, null); repeatable",
    )
    parser.add_argument(
        "--ckpt",
        action="append",
        default=[],
        metavar="FILE",
        help="audiosep model file or Lightning .ckpt (pruned ones too); repeatable",
    )
    parser.add_argument(
        "--lengths",
        type=_list_of(float),
        default=[1.0, 4.0, 16.0],
        metavar="S[,S]",
        help="input seconds (default: 1,4,16)",
    )
    parser.add_argument(
        "--batch-sizes", type=_list_of(int), default=[1], metavar="B[,B]", help="(default: 1)"
    )
    parser.add_argument(
        "--dtypes",
        type=_list_of(str, DTYPES),
        default=["fp32"],
        metavar="fp32[,bf16]",
        help="fp32, bf16, fp16 (CUDA only) (default: fp32)",
    )
    parser.add_argument(
        "--backends",
        type=_backends,
        default=list(DEFAULT_BACKENDS),
        metavar="NAME[,NAME]",
        help=f"{', '.join(BACKENDS)} or all (default: {','.join(DEFAULT_BACKENDS)})",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="add torchaudio's / SpeechBrain's implementation of the same architecture when importable",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--block-ms", type=float, default=20.0,
                        help="streaming block of causal models, in ms (default: %(default)s)")
    parser.add_argument(
        "--list", action="store_true", help="list the registry presets and backends, and exit"
    )
    _common(parser, "bench_out", 10.0)
    modes = parser.add_subparsers(dest="bench_mode", title="modes", metavar="MODE")
    sweep = modes.add_parser(
        "sweep",
        help="Conv-TasNet over X, R, H: cost, optional short training, Pareto plot",
        description="Conv-TasNet over X (blocks), R (repeats), H (hidden channels): cost table, "
        "Pareto plot, and with --train-minutes and --data a short training per configuration.",
    )
    sweep.add_argument(
        "--base",
        choices=SWEEP_BASES,
        default="conv_tasnet_demo",
        help="sizes of the rest (default: %(default)s)",
    )
    sweep.add_argument(
        "--X",
        "--num-layers",
        dest="num_layers",
        type=_list_of(int),
        default=[4, 6, 8],
        metavar="X[,X]",
        help="blocks per repeat (default: 4,6,8)",
    )
    sweep.add_argument(
        "--R",
        "--num-repeats",
        dest="num_repeats",
        type=_list_of(int),
        default=[1, 2, 3],
        metavar="R[,R]",
        help="repeats (default: 1,2,3)",
    )
    sweep.add_argument(
        "--H",
        "--hidden-channels",
        dest="hidden_channels",
        type=_list_of(int),
        default=[128, 256, 512],
        metavar="H[,H]",
        help="hidden channels (default: 128,256,512)",
    )
    sweep.add_argument(
        "--full-grid", action="store_true", help="every combination (default: even-index subsample above 16)"
    )
    sweep.add_argument(
        "--seconds", type=float, default=4.0, help="input length of the latency (default: %(default)s)"
    )
    sweep.add_argument("--batch-size", type=int, default=1)
    sweep.add_argument("--backend", choices=BACKENDS, default="prepared", help="(default: %(default)s)")
    sweep.add_argument(
        "--memory", action="store_true", help="also peak memory (one fresh process per configuration)"
    )
    sweep.add_argument(
        "--train-minutes", type=float, help="train each configuration this long and report val SI-SNRi"
    )
    sweep.add_argument(
        "--data", help="LibriMix-layout folder to train on (e.g. what `audiosep data demo --out DIR` wrote)"
    )
    sweep.add_argument(
        "--train-config", default="demo/convtasnet_tiny.yaml", help="training recipe (default: %(default)s)"
    )
    sweep.add_argument(
        "--train-arg",
        dest="train_args",
        action="append",
        default=[],
        metavar="=--KEY=VALUE",
        help="extra LightningCLI argument, e.g. --train-arg=--data.batch_size=8; repeatable",
    )
    _common(sweep, "bench_sweep", 20.0)


def _check_device(device: str, dtypes: list[str]) -> None:
    kind = check_device(device)
    if kind not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda[:N], got {device!r}")
    if "fp16" in dtypes and kind != "cuda":
        raise UserError("--dtypes fp16 is benchmarked on CUDA only (use bf16 on CPU)")


MAX_LENGTH_S = 3600  # an hour of audio per benchmarked input


def _check_at_most_an_hour(flag: str, seconds: float) -> None:
    """Refuse an input over :data:`MAX_LENGTH_S` in one line (1e7 s asked for 256 GB, 1e30 overflowed: tracebacks)."""
    if seconds > MAX_LENGTH_S:
        raise UserError(f"{flag}: at most {MAX_LENGTH_S} s per input, got {seconds:g}")


def _check_threads(threads: int | None) -> None:
    """At most 8 threads per CPU core (100000 was accepted, then died in the reference matmul; reviewer)."""
    import os

    limit = 8 * (os.cpu_count() or 1)
    if threads is not None and threads > limit:
        raise UserError(f"--threads: at most {limit} (8 per CPU core of this machine), got {threads}")


def _check_positive(**values: object) -> None:
    """Each value (or every item of a list) must be a finite number > 0 (``nan`` and ``inf`` included)."""
    for name, value in values.items():
        items = value if isinstance(value, list) else [value]
        if value is not None and not all(math.isfinite(v) and v > 0 for v in items):
            raise UserError(f"--{name.replace('_', '-')} must be positive and finite, got {value}")


def run(args: argparse.Namespace) -> int:
    if args.bench_mode == "sweep":
        return _run_sweep(args)
    import torch

    from audiosep.bench import BenchSettings, format_table, parse_overrides, run_bench, write_outputs
    from audiosep.bench.resume import PARTIAL_FILE, CaseLog, run_identity
    from audiosep.bench.run import BenchError
    from audiosep.io import directory_lock, folders_to_make, remove_empty_folders
    from audiosep.models import list_models

    if args.list:
        print("models: " + ", ".join(list_models()))
        print("backends: " + ", ".join(BACKENDS))
        return 0
    if not args.models and not args.ckpt:
        raise UserError(f"give --models NAME[,NAME] and/or --ckpt FILE; models: {', '.join(list_models())}")
    unknown = [name for name in args.models if name not in list_models()]
    if unknown:
        raise UserError(f"unknown model {', '.join(unknown)}; valid: {', '.join(list_models())}")
    missing = [path for path in args.ckpt if not Path(path).is_file()]
    if missing:
        raise UserError(f"{missing[0]}: no such checkpoint file")
    _check_positive(lengths=args.lengths, batch_sizes=args.batch_sizes, threads=args.threads, repeats=args.repeats,
                    time_budget=args.time_budget, block_ms=args.block_ms)  # fmt: skip
    _check_at_most_an_hour("--lengths", max(args.lengths))
    _check_threads(args.threads)
    if max(args.lengths) * max(args.batch_sizes) > MAX_LENGTH_S:  # --batch-sizes 1000000 asked for 32 GB: a traceback
        raise UserError(f"--batch-sizes x --lengths: at most {MAX_LENGTH_S} s of audio per call, got "
                        f"{max(args.batch_sizes)} x {max(args.lengths):g} s")  # fmt: skip
    from audiosep.streaming import MAX_BLOCK_MS

    if args.block_ms > MAX_BLOCK_MS:
        raise UserError(f"--block-ms: at most {MAX_BLOCK_MS:g} (a stream's block is a chunk of a live signal), "
                        f"got {args.block_ms:g}")  # fmt: skip
    args.lengths, args.batch_sizes = sorted(set(args.lengths)), sorted(set(args.batch_sizes))  # each case once
    _check_device(args.device, args.dtypes)
    check_output_folder(args.out_dir, "--out-dir")
    try:
        overrides, model_overrides = parse_overrides(args.override)
    except ValueError as err:
        raise UserError(f"--override: {err}") from None
    settings = BenchSettings(
        models=args.models, overrides=overrides, model_overrides=model_overrides, checkpoints=args.ckpt,
        lengths=args.lengths, batch_sizes=args.batch_sizes, dtypes=args.dtypes, backends=args.backends,
        device=args.device, threads=args.threads, repeats=args.repeats, time_budget_s=args.time_budget,
        peers=args.peers, memory=not args.no_memory, progress=not args.no_progress, block_ms=args.block_ms,
    )  # fmt: skip
    out = Path(args.out_dir)
    missing = folders_to_make(out)
    try:
        with directory_lock(out, "--out-dir"):  # two runs would share one partial file
            log = CaseLog(out / PARTIAL_FILE, run_identity(settings, args.threads or torch.get_num_threads()))
            if log.resumed:
                print(f"resuming the interrupted benchmark in {log.path}: {len(log.cases)} case(s) and "
                      f"{len(log.memory)} memory figure(s) done", file=sys.stderr)  # fmt: skip
            try:
                report = run_bench(settings, log)
            except BenchError as err:
                raise UserError(str(err)) from None
            print(format_table(report))
            paths = write_outputs(report, out)
            log.finish()
    finally:
        remove_empty_folders(missing)  # made for the lock: a refused run leaves none
    print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


def _run_sweep(args: argparse.Namespace) -> int:
    from audiosep.bench import SweepSettings, format_sweep_table, run_sweep, write_sweep_outputs
    from audiosep.bench.run import BenchError

    _check_positive(num_layers=args.num_layers, num_repeats=args.num_repeats, hidden_channels=args.hidden_channels,
                    seconds=args.seconds, batch_size=args.batch_size, threads=args.threads, repeats=args.repeats,
                    time_budget=args.time_budget, train_minutes=args.train_minutes)  # fmt: skip
    _check_at_most_an_hour("--seconds", args.seconds)
    _check_threads(args.threads)
    _check_device(args.device, ["fp32"])
    check_output_folder(args.out_dir, "--out-dir")
    if args.train_minutes is not None and not args.data:
        raise UserError(
            "--train-minutes needs --data DIR (e.g. the folder `audiosep data demo --out DIR` wrote)"
        )
    if args.data and not Path(args.data).is_dir():
        raise UserError(f"--data {args.data}: no such folder")
    settings = SweepSettings(
        base=args.base, num_layers=args.num_layers, num_repeats=args.num_repeats,
        hidden_channels=args.hidden_channels, full_grid=args.full_grid, seconds=args.seconds,
        batch_size=args.batch_size, backend=args.backend, device=args.device, threads=args.threads,
        repeats=args.repeats, time_budget_s=args.time_budget, memory=args.memory,
        train_minutes=args.train_minutes, data=args.data, train_config=args.train_config,
        train_args=args.train_args, train_dir=str(Path(args.out_dir) / "train"), progress=not args.no_progress,
    )  # fmt: skip
    try:
        report = run_sweep(settings)
    except BenchError as err:  # --H 1000000000 asked for 256 GB: a traceback (reviewer)
        raise UserError(str(err)) from None
    print(format_sweep_table(report))
    paths = write_sweep_outputs(report, args.out_dir)
    print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0
