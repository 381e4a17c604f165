"""``run_bench``: every model x backend x dtype x batch size x length, one record each.

Per case (dtype, batch size, length) every runner gets one warm-up pass (two for ``compile``:
the first one compiles), its output is checked against the eager model's (a converted backend
that computes something else is reported, not timed), and then all runners of the case are timed
together, interleaved, peers included, for a fixed or an adaptive number of rounds. Peak memory
comes afterwards, one fresh worker process per record on CPU.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from audiosep.bench.backends import DEFAULT_BACKENDS, Runner, make_runner, unsupported
from audiosep.bench.measure import (
    DTYPE_NAMES,
    DTYPES,
    MATMUL_SIZE,
    Timing,
    adaptive_repeats,
    count_macs_at,
    machine_info,
    matmul_pass,
    time_interleaved,
    warm_up,
)
from audiosep.bench.memory import MemoryWorkers, cuda_peak, pass_memory_problem, rss_supported
from audiosep.bench.models import LoadedModel, ModelSpec, example_inputs, load, peer_spec
from audiosep.bench.resume import CaseLog
from audiosep.bench.streaming import streaming_latency
from audiosep.checkpoint import CheckpointError
from audiosep.errors import UserError, one_line
from audiosep.losses import si_snr

SCHEMA = "audiosep.bench/1"
PEER_MODULES = {"torchaudio-conv-tasnet": "torchaudio", "speechbrain-sepformer": "speechbrain.lobes.models.dual_path",
                "speechbrain-resepformer": "speechbrain.lobes.models.resepformer"}  # fmt: skip
TOLERANCE = {
    torch.float32: 1e-3,
    torch.bfloat16: 5e-2,
    torch.float16: 5e-2,
}  # max abs error vs eager, x max(1, |ref|)
INT8_MIN_SI_SNR_DB = 20.0


class BenchError(ValueError):
    """A model, override or checkpoint the benchmark cannot build (the message names it)."""


@dataclass
class BenchSettings:
    """What to measure (see ``audiosep bench --help`` for each field's meaning)."""

    models: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    model_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkpoints: list[str] = field(default_factory=list)
    lengths: list[float] = field(default_factory=lambda: [1.0, 4.0, 16.0])
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    backends: list[str] = field(default_factory=lambda: list(DEFAULT_BACKENDS))
    device: str = "cpu"
    threads: int | None = None
    repeats: int | None = None
    time_budget_s: float = 10.0
    peers: bool = False
    memory: bool = True
    progress: bool = True
    block_ms: float = 20.0


def parse_overrides(pairs: Iterable[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``key=value`` (every model) and ``model.key=value`` (one model); values are YAML scalars/lists.

    Raises:
        ValueError: a pair without ``=`` or with an empty key.

    Example:
        >>> parse_overrides(["hidden_channels=256", "conv_tasnet_demo.norm=cLN"])
        ({'hidden_channels': 256}, {'conv_tasnet_demo': {'norm': 'cLN'}})
    """
    import yaml

    common: dict[str, Any] = {}
    per_model: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        model, _, key = key.strip().rpartition(".")
        if not sep or not key:
            raise ValueError(f"override {pair!r} is not key=value (or model.key=value)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"override {pair!r}: the value is not YAML ({type(err).__name__})") from err
        (per_model.setdefault(model, {}) if model else common)[key] = value
    return common, per_model


def _label(name: str, overrides: dict[str, Any]) -> str:
    return f"{name}({','.join(f'{k}={v}' for k, v in overrides.items())})" if overrides else name


def _check_override_targets(settings: BenchSettings) -> list[str]:
    """Notes on overrides some benchmarked models do not take; raises for one no model takes.

    Why: an override of a model not in ``--models`` (a typo) or given with checkpoints only was
    dropped silently, and the preset benchmarked as if it had been applied.
    """
    stray = sorted(set(settings.model_overrides) - set(settings.models))
    if stray:
        raise BenchError(f"--override {stray[0]}.KEY=VALUE: {stray[0]!r} is not one of --models "
                         f"({', '.join(settings.models) or 'none given'})")  # fmt: skip
    if settings.overrides and not settings.models:
        raise BenchError("--override applies to --models presets only; a --ckpt model is benchmarked as saved")
    if settings.overrides and settings.checkpoints:
        return [f"overrides {_label('', settings.overrides)} apply to the presets, not to the --ckpt models"]
    return []


def load_checked(spec: ModelSpec) -> LoadedModel:
    """:func:`load`, with what a bad name, override or file raises as a one-line :class:`BenchError`."""
    try:
        return load(spec)
    except CheckpointError as err:  # one line that names the file itself
        raise BenchError(str(err)) from err
    except (ValueError, TypeError, KeyError, RuntimeError, ArithmeticError) as err:  # bad name or override
        raise BenchError(f"{spec.label}: {one_line(err)}") from err


def resolve_models(settings: BenchSettings) -> tuple[list[LoadedModel], list[LoadedModel], list[str]]:
    """Our models, their peers (when asked and importable) and notes on what was adjusted or skipped."""
    notes = _check_override_targets(settings)
    specs = []
    for name in settings.models:
        asked = settings.overrides | settings.model_overrides.get(name, {})
        overrides = dict(asked)
        if settings.peers and name.startswith("conv_tasnet") and "encoder_activation" not in overrides:
            overrides["encoder_activation"] = "linear"  # torchaudio's (and the authors') encoder has no ReLU
            notes.append(f"{name}: encoder_activation=linear, as torchaudio's ConvTasNet")
        specs.append(ModelSpec(_label(name, asked), "preset", name, overrides))
    specs += [ModelSpec(Path(path).name, "checkpoint", str(path)) for path in settings.checkpoints]
    seen: dict[str, int] = {}
    for spec in specs:  # labels are keys: make them unique
        seen[spec.label] = seen.get(spec.label, 0) + 1
        spec.label += f"#{seen[spec.label]}" if seen[spec.label] > 1 else ""
    ours = [load_checked(spec) for spec in specs]
    peers: dict[str, LoadedModel] = {}
    for model in ours if settings.peers else []:
        peer = peer_spec(model)
        if isinstance(peer, str):
            notes.append(f"{model.spec.label}: no peer ({peer})")
            continue
        if getattr(model.module, "init_args", {}).get("encoder_activation", "linear") != "linear":
            # torchaudio's encoder has no activation: the peer computes one ReLU pass less (its cost is the same
            # to within that pass, its outputs are not) (reviewer)
            notes.append(f"{model.spec.label}: its encoder has a {model.module.init_args['encoder_activation']}; "
                         f"{peer.label}'s has none (one elementwise pass less: same cost, other outputs)")  # fmt: skip
        key = json.dumps([peer.name, peer.overrides, peer.sample_rate], sort_keys=True)
        if key not in peers:
            peer.label += (
                f" ({model.spec.label})" if any(p.spec.label == peer.label for p in peers.values()) else ""
            )
            try:
                peers[key] = load(peer)
            except Exception as err:  # noqa: BLE001 (a peer that does not build is skipped, with why)
                notes.append(f"{model.spec.label}: peer {peer.label} did not build ({one_line(err)})")
                continue
        peers[key].spec.peer_of.append(model.spec.label)
    return ours, list(peers.values()), notes


def _record(model: LoadedModel, runner: Runner, seconds: float, batch: int, macs: float, status: str,
            device: torch.device, threads: int) -> dict[str, Any]:  # fmt: skip
    return {
        "model": model.spec.label, "kind": "peer" if model.spec.kind == "peer" else "ours",
        "backend": runner.backend, "dtype": DTYPE_NAMES[DTYPES_BY_STR[runner.dtype]], "batch_size": batch,
        "seconds": seconds, "device": device.type, "threads": threads, "status": status,
        "params": model.params, "macs": macs, "gmac_per_audio_second": macs / batch / seconds / 1e9,
        "latency_s": None, "cpu_time_s": None, "repeats": 0, "rtf": None, "mac_per_s": None,
        "roofline_mac_per_s": None, "roofline_fraction": None, "peak_memory_mib": None, "memory": "not measured",
        "max_abs_error": None, "si_snr_vs_eager_db": None, "peer": None, "peer_ratio": None,
    }  # fmt: skip


ROOFLINE_KEY = "roofline"  # the fp32 matmul's entry in each case's interleaved rounds
DTYPES_BY_STR = {str(dtype).removeprefix("torch."): dtype for dtype in DTYPES.values()}


def _check(
    output: torch.Tensor, reference: torch.Tensor | None, dtype: torch.dtype, backend: str = "eager"
) -> tuple[float | None, float | None, str]:
    """Max abs error and SI-SNR (dB) of ``output`` vs the eager ``reference``, and ``ok`` or why it fails.

    Every backend must match eager within :data:`TOLERANCE`, except ``int8``, which must keep an
    SI-SNR of at least :data:`INT8_MIN_SI_SNR_DB` against it (quantization error is not small in abs terms).
    """
    if reference is None:
        return None, None, "ok"
    if output.shape != reference.shape:
        return None, None, unsupported(f"output shape {tuple(output.shape)} != eager's {tuple(reference.shape)}")
    error = float((output.float() - reference.float()).abs().max())
    if backend == "int8":
        snr = float(si_snr(output.float(), reference.float()).mean())
        if not snr >= INT8_MIN_SI_SNR_DB:
            return error, snr, unsupported(f"int8 output SI-SNR vs eager {snr:.1f} dB < {INT8_MIN_SI_SNR_DB} dB")
        return error, snr, "ok"
    tolerance = TOLERANCE[dtype] * max(1.0, float(reference.float().abs().max()))
    if not error <= tolerance:  # also catches NaN
        return error, None, unsupported(f"output differs from eager by {error:.3g} (tolerance {tolerance:.3g})")
    return error, None, "ok"


def run_case(runners: list[tuple[LoadedModel, Runner, torch.nn.Module]], seconds: float, batch: int,
             macs: dict[str, dict[float, float]], settings: BenchSettings, device: torch.device,
             threads: int) -> list[dict[str, Any]]:  # fmt: skip
    """Records of one (dtype, batch, length) case: warm-up and check each runner, time them together.

    The fp32 roofline matmul is one more entry of every round; each record's roofline is its best
    pass in these rounds (the throughput the machine had while the case ran).
    """
    records, timed_fns, references = [], {}, {}
    too_large: dict[str, str | None] = {}  # per model: why a pass of this case would not fit in memory
    for model, runner, plain in runners:
        dtype = DTYPES_BY_STR[runner.dtype]
        record = _record(model, runner, seconds, batch, macs[model.spec.label][seconds] * batch, runner.status,
                         device, threads)  # fmt: skip
        records.append(record)
        if runner.fn is None:
            continue
        inputs = example_inputs(model, batch, seconds, dtype, device)
        if model.spec.label not in too_large:
            too_large[model.spec.label] = pass_memory_problem(plain, inputs, device)
        if too_large[model.spec.label] is not None:
            record["status"] = unsupported(too_large[model.spec.label])
            continue
        try:
            with torch.inference_mode():
                output, wall = warm_up(runner.fn, inputs, device, 2 if runner.backend == "compile" else 1)
                if model.spec.label not in references and model.spec.kind != "peer":
                    references[model.spec.label] = output if runner.backend == "eager" else plain(*inputs)
                    references[model.spec.label] = _first(references[model.spec.label])
        except Exception as err:  # noqa: BLE001 (a backend that fails to run is a result)
            runner.fail(err)
            record["status"] = runner.status
            continue
        record["max_abs_error"], record["si_snr_vs_eager_db"], record["status"] = _check(
            output, references.get(model.spec.label), dtype, runner.backend
        )
        if record["status"] == "ok":
            timed_fns[id(record)] = (record, runner, functools.partial(runner.fn, *inputs), wall)
    if not timed_fns:
        return records
    matmul = matmul_pass(device)
    with torch.inference_mode():
        _, matmul_wall = warm_up(matmul, (), device, 1)
    round_s = matmul_wall + sum(wall for *_, wall in timed_fns.values())
    repeats = settings.repeats or adaptive_repeats(round_s, settings.time_budget_s)
    fns = {key: fn for key, (_, _, fn, _) in timed_fns.items()}
    timings = time_interleaved(fns | {ROOFLINE_KEY: matmul}, repeats, device)
    peak_mac_per_s = MATMUL_SIZE**3 / timings[ROOFLINE_KEY].min
    for key, (record, runner, fn, _) in timed_fns.items():
        _fill_timing(record, timings[key], peak_mac_per_s)
        if device.type == "cuda" and settings.memory and runner.backend == "onnxruntime":
            record["memory"] = "not measured: onnxruntime's CUDA memory is outside torch's allocator"
        elif device.type == "cuda" and settings.memory:
            record["peak_memory_mib"], record["memory"] = cuda_peak(fn, (), device), "cuda max allocated"
    return records


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def _fill_timing(record: dict[str, Any], timing: Timing, peak_mac_per_s: float) -> None:
    record.update(latency_s=timing.latency_dict(), cpu_time_s=timing.cpu_median, repeats=timing.repeats,
                  rtf=timing.median / (record["batch_size"] * record["seconds"]),
                  mac_per_s=record["macs"] / timing.median)  # fmt: skip
    record["roofline_mac_per_s"] = peak_mac_per_s
    record["roofline_fraction"] = record["mac_per_s"] / peak_mac_per_s


def build_runners(models: list[LoadedModel], backends: list[str], dtype: torch.dtype, device: torch.device,
             workdir: Path, threads: int, lengths: list[float]) -> list[tuple[LoadedModel, Runner, torch.nn.Module]]:  # fmt: skip
    """(model, runner, plain model) for every (model, backend) at ``dtype``: ours through each
    backend (eager first: its output is the reference), peers through eager only."""
    out = []
    ordered = ["eager", *[b for b in backends if b != "eager"]] if "eager" in backends else list(backends)
    for model in models:
        plain = model.module
        if (dtype, device.type) != (torch.float32, "cpu"):
            plain = copy.deepcopy(plain).to(device, dtype)
        example = example_inputs(model, 1, min(lengths), dtype, device)
        for backend in ["eager"] if model.spec.kind == "peer" else ordered:
            runner = make_runner(backend, plain, model.spec.label, example, model.is_asr, workdir, threads)
            out.append((model, runner, plain))
    return out


def memory_jobs(records: list[dict[str, Any]], models: dict[str, LoadedModel], artifacts: dict[tuple, str | None],
                 settings: BenchSettings) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:  # fmt: skip
    """(record, worker job or None) for every record that ran, on CPU."""
    jobs = []
    for record in records:
        if not _measured_in_a_worker(record, settings):
            continue
        if record["backend"] == "compile":
            record["memory"] = "not measured: compiling again in a fresh process costs minutes"
            continue
        jobs.append((record, {
            "spec": models[record["model"]].spec.as_dict(), "backend": record["backend"],
            "artifact": artifacts.get((record["model"], record["backend"], record["dtype"])),
            "dtype": record["dtype"], "seconds": record["seconds"], "batch_size": record["batch_size"],
            "threads": record["threads"],
        }))  # fmt: skip
    return jobs


def _measured_in_a_worker(record: dict[str, Any], settings: BenchSettings) -> bool:
    """Whether a record's peak memory belongs to the fresh-process phase: a CPU record that ran, memory asked for."""
    return settings.memory and record["status"] == "ok" and record["device"] == "cpu"


def _needs_memory(record: dict[str, Any], settings: BenchSettings) -> bool:
    """Whether a fresh process measures a record's peak memory (compiled ones are not: minutes to compile again)."""
    return _measured_in_a_worker(record, settings) and record["backend"] != "compile"


def measure_memory(jobs: list[tuple[dict[str, Any], dict[str, Any]]], threads: int, preload: tuple[str, ...],
                   bar: Any, log: CaseLog | None = None) -> None:  # fmt: skip
    """Fill ``peak_memory_mib`` and ``memory`` of each record from its job, a fresh process each (from
    ``log`` where it holds the figure already; each new one goes there as it comes)."""
    pending = []
    for record, job in jobs:
        saved = log.memory_of(record) if log else None
        if saved is None:
            pending.append((record, job))
        else:
            record.update(saved)
    jobs = pending
    if not jobs:
        return
    bar.total += len(jobs)
    with MemoryWorkers(threads, preload) as workers:
        for record, job in jobs:
            bar.set_postfix_str(f"memory {record['model']} {record['backend']} {record['seconds']:g} s")
            try:
                record["peak_memory_mib"], record["memory"] = workers.measure(job), "rss in a fresh process"
            except RuntimeError as err:
                record["memory"] = f"failed: {one_line(err)}"
            if log:
                log.add_memory(record)
            bar.update()


def add_peer_ratios(records: list[dict[str, Any]], peers: list[LoadedModel]) -> None:
    """``peer_ratio`` = peer median latency / ours, for each of our records that has a timed peer."""
    peer_of = {ours: peer.spec.label for peer in peers for ours in peer.spec.peer_of}
    timed_peers = {(r["model"], r["dtype"], r["batch_size"], r["seconds"]): r for r in records
                   if r["kind"] == "peer" and r["latency_s"]}  # fmt: skip
    for record in records:
        if record["kind"] != "ours" or record["model"] not in peer_of:
            continue
        record["peer"] = peer_of[record["model"]]
        peer = timed_peers.get((record["peer"], record["dtype"], record["batch_size"], record["seconds"]))
        if peer and record["latency_s"]:
            record["peer_ratio"] = peer["latency_s"]["median"] / record["latency_s"]["median"]


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="bench", unit="case", file=sys.stderr, disable=None if enabled else True, leave=False)  # None: a terminal only


def _model_entry(model: LoadedModel, macs_counted_on: str) -> dict[str, Any]:
    info = {"params": model.params, "sample_rate": model.sample_rate, "class": type(model.module).__name__}
    return model.spec.as_dict() | info | {"macs_counted_on": macs_counted_on}


def available_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS tells, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def oversubscription_note(device: torch.device, threads: int) -> list[str]:
    """A note when CPU threads outnumber the cores: threads then wait for each other, timings mislead."""
    cores = available_cores()
    if device.type != "cpu" or threads <= cores:
        return []
    return [f"{threads} threads on {cores} CPU cores (oversubscribed): threads wait for each other, so the "
            "latencies and above all the roofline matmul are not representative of this machine"]  # fmt: skip


def check_lengths(models: Iterable[LoadedModel], lengths: Iterable[float], option: str = "--lengths") -> None:
    """Raise ``UserError`` for a length shorter than a model's window (the input would be padded, and
    RTF and GMAC per audio second computed for audio that was never run)."""
    from audiosep.bench.models import FEATURE_FRAMES_PER_SECOND
    from audiosep.models.base import model_window

    for model in models:
        rate, window = ((FEATURE_FRAMES_PER_SECOND, 1) if model.is_asr else (model.sample_rate, model_window(model.module)))
        for seconds in lengths:
            if round(seconds * rate) < window:
                raise UserError(f"{option} {seconds:g} s is {round(seconds * rate)} samples at {rate} Hz, shorter than "
                                f"{model.spec.label}'s {window}-sample window")  # fmt: skip


def _nothing_left(done: dict[tuple, list | None], log: CaseLog | None, settings: BenchSettings) -> bool:
    """Whether a dtype's cases are all in ``log`` with their memory figures (its runners need not be built:
    exports for the memory workers included)."""
    if log is None or any(case is None for case in done.values()):
        return False
    records = [record for case in done.values() for record in case]
    return all(log.memory_of(record) is not None or not _needs_memory(record, settings) for record in records)


def run_bench(settings: BenchSettings, log: CaseLog | None = None) -> dict[str, Any]:
    """Measure everything ``settings`` asks for; returns the report (schema :data:`SCHEMA`, see README).

    With ``log`` (the command line's ``bench.partial.json``), each finished case and memory figure is kept
    there as it comes, and the ones it holds already (an interrupted run of the same identity) are not run again.
    """
    device = torch.device(settings.device)
    threads = settings.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    dtypes = [DTYPES[name] for name in settings.dtypes]
    lengths = sorted(settings.lengths)
    ours, peers, notes = resolve_models(settings)
    check_lengths(ours, lengths)
    notes += oversubscription_note(device, threads)
    if log is not None and log.resumed:  # a reader must know the cases were timed in two sittings
        notes.append(f"resumed: {len(log.cases)} case(s) and {len(log.memory)} memory figure(s) were measured before "
                     f"an interruption ({log.path}), the rest after")  # fmt: skip
    models = {m.spec.label: m for m in ours + peers}
    machine = machine_info(device, threads, dtypes)
    if torch.bfloat16 in dtypes and not machine["bf16_native"]:  # its rows were "ok" at 8x fp32's time (reviewer)
        notes.append("bf16 is emulated on this device (no avx512_bf16 or AMX): its rows time the emulation, "
                     "slower than fp32; never pick bf16 here")  # fmt: skip
    counted = {label: count_macs_at(m.module, functools.partial(example_inputs, m, 1), lengths, m.spec.kind != "peer")
               for label, m in models.items()}  # fmt: skip
    macs = {label: per_length for label, (per_length, _) in counted.items()}
    if settings.memory and device.type == "cpu" and not rss_supported():
        notes.append("peak memory not measured: needs Linux /proc/self/clear_refs")
        settings = BenchSettings(**{**asdict(settings), "memory": False})
    records: list[dict[str, Any]] = []
    artifacts: dict[tuple, str | None] = {}
    cases = len(dtypes) * len(settings.batch_sizes) * len(lengths)
    with (
        tempfile.TemporaryDirectory(prefix="audiosep-bench-") as workdir,
        _progress(cases, settings.progress) as bar,
    ):
        for dtype in dtypes:
            name = DTYPE_NAMES[dtype]
            done = {(batch, seconds): log.case(name, batch, seconds) if log else None
                    for batch in settings.batch_sizes for seconds in lengths}  # fmt: skip
            if _nothing_left(done, log, settings):
                records += [record for case in done.values() for record in case]
                bar.update(len(done))
                continue
            runners = build_runners(
                list(models.values()), settings.backends, dtype, device, Path(workdir), threads, lengths
            )
            artifacts |= {(r.model, r.backend, name): r.artifact for _, r, _ in runners}
            for (batch, seconds), case in done.items():
                if case is None:
                    bar.set_postfix_str(f"{name} b{batch} {seconds:g} s")
                    case = run_case(runners, seconds, batch, macs, settings, device, threads)
                    if log:
                        log.add_case(name, batch, seconds, case)
                records += case
                bar.update()
            del runners
        jobs = memory_jobs(records, models, artifacts, settings)
        measure_memory(jobs, threads, tuple(PEER_MODULES[p.spec.name] for p in peers), bar, log)
    add_peer_ratios(records, peers)
    streaming = [streaming_latency(m.spec.label, m.module, m.sample_rate, settings.block_ms, device)
                 for m in ours if not m.is_asr]  # fmt: skip
    return {
        "schema": SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "settings": asdict(settings) | {"threads": threads, "lengths": lengths},
        "models": [_model_entry(m, counted[label][1]) for label, m in models.items()],
        "notes": notes,
        "results": records,
        "streaming": streaming,
    }
