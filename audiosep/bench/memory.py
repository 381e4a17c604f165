"""Peak memory of one forward pass: a fresh worker process per case on CPU, the allocator on CUDA.

CPU: a fresh child process per case (forked from a server that has only imported torch, see
:class:`MemoryWorkers`) builds the model (or loads the exported file), runs a short warm-up pass (library
buffers and caches are not the model's memory), returns freed heap to the OS (``malloc_trim``),
resets the resident-set high-water mark (Linux ``/proc/self/clear_refs``), runs the pass and
reports ``VmHWM`` minus the ``VmRSS`` just before it: the extra RAM of the pass, its output
included, its input not. A fresh process per case, so that no earlier case's heap is counted.
CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before the pass.

Worker use: ``python -m audiosep.bench.memory '<job as JSON>'`` (one job, for debugging) or
``--serve`` (the server :class:`MemoryWorkers` talks to: JSON lines in, JSON lines out).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

WARMUP_SECONDS = 0.25
MIB = 2**20


def _status_mib(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (resident high-water mark) of this process, MiB."""
    match = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1)) / 1024


def start_peak_window() -> float:
    """Return freed heap to the OS, reset the RSS high-water mark, and return the RSS now (MiB)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the baseline may include freed heap
    Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: resets VmHWM
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    """The resident-set high-water mark (MiB) since the last :func:`start_peak_window`."""
    return _status_mib("VmHWM")


# A pass estimated before it runs may take this share of the memory available: the estimate
# (:func:`audiosep.cost.activation_peak_bytes`) sees no kernel workspace, allocator slack or library buffer, which
# made a plain Conv-TasNet's measured peak 1.4x its estimate at 1 and 16 s (SepFormers: 0.4-1.2x).
MEMORY_SHARE = 0.5


def available_mib(device: torch.device) -> float | None:
    """Memory a pass on ``device`` can still take, MiB; None where unknown.

    CPU: the least of the kernel's ``MemAvailable`` (``/proc/meminfo``), the room under this cgroup's
    ``memory.max`` (v2; a container's ``/proc/meminfo`` shows the host's memory, and its limit ends the
    process without a message) and under ``RLIMIT_AS`` (``ulimit -v``). CUDA: the driver's free memory plus what
    torch's allocator holds unused.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return (free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)) / MIB
    limits = [_meminfo_available_mib(), _cgroup_room_mib(), _address_space_room_mib()]
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def memory_room_mib(device: torch.device) -> float | None:
    """The memory (MiB) a pass estimated before it runs may take: :data:`MEMORY_SHARE` of :func:`available_mib`."""
    available = available_mib(device)
    return None if available is None else MEMORY_SHARE * available


def pass_memory_problem(
    model: torch.nn.Module, inputs: tuple[Tensor, ...], device: torch.device, extra_mib: float = 0.0
) -> str | None:
    """Why one pass of ``model`` over ``inputs`` (plus ``extra_mib``, what runs before it) would not fit in
    :func:`memory_room_mib`, estimated before it runs (:func:`~audiosep.cost.activation_peak_bytes`); None when it
    fits or cannot be estimated. Why: a model file can need gigabytes per second of audio, and a 16 s pass then
    ran into the system's out-of-memory killer (reviewer)."""
    from audiosep.cost import estimated_peak_mib

    room = memory_room_mib(device)
    peak = None if room is None else estimated_peak_mib(model, *inputs)
    if peak is None or peak + extra_mib <= room:
        return None
    need = peak + extra_mib
    return f"a pass needs about {need:.0f} MiB (estimated before it ran), {room:.0f} MiB can be used on {device.type}"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _meminfo_available_mib() -> float | None:
    match = re.search(r"MemAvailable:\s+(\d+) kB", _read("/proc/meminfo") or "")
    return None if match is None else int(match.group(1)) / 1024


def _cgroup_room_mib() -> float | None:
    """``memory.max - memory.current`` of this process's cgroup (v2), MiB; None without a limit."""
    relative = re.search(r"^0::(/.*)$", _read("/proc/self/cgroup") or "", re.MULTILINE)
    if relative is None:
        return None
    folder = f"/sys/fs/cgroup{relative.group(1).rstrip('/')}"
    limit, current = _read(f"{folder}/memory.max"), _read(f"{folder}/memory.current")
    if limit is None or current is None or not limit.strip().isdigit() or not current.strip().isdigit():
        return None  # "max": no limit
    return max(0, int(limit) - int(current)) / MIB


def _address_space_room_mib() -> float | None:
    """``RLIMIT_AS`` less this process's virtual size, MiB; None without a limit (or off Linux)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    match = re.search(r"VmSize:\s+(\d+) kB", _read("/proc/self/status") or "")
    if soft == resource.RLIM_INFINITY or match is None:
        return None
    return max(0, soft - int(match.group(1)) * 1024) / MIB


def rss_supported() -> bool:
    """Whether this system has the ``/proc`` files the CPU measurement needs (Linux)."""
    return Path("/proc/self/clear_refs").exists() and Path("/proc/self/status").exists()


def _worker_fn(job: dict[str, Any]) -> tuple[Callable[..., Tensor], Any]:
    """The job's model through its backend, and the loaded model (for its inputs)."""
    from audiosep.bench.backends import _call, int8_model, onnxruntime_runner
    from audiosep.bench.measure import DTYPES
    from audiosep.bench.models import ModelSpec, load

    model = load(ModelSpec(**job["spec"]))
    module = model.module.to(DTYPES[job["dtype"]])
    backend = job["backend"]
    if backend == "eager":
        return _call(module), model
    if backend == "prepared":
        from audiosep.optimize import prepare_for_inference

        return _call(prepare_for_inference(module)), model
    if backend == "int8":
        return _call(int8_model(module)), model
    if backend == "torchscript":
        return _call(torch.jit.load(job["artifact"])), model
    if backend == "onnxruntime":
        return onnxruntime_runner(job["artifact"], job["threads"]), model
    raise ValueError(f"the memory worker does not run backend {backend!r}")


def worker(job: dict[str, Any]) -> dict[str, float]:
    """Run in the fresh process: the extra RSS (MiB) of one pass of ``job``."""
    import warnings

    from audiosep.bench.measure import DTYPES
    from audiosep.bench.models import example_inputs

    warnings.simplefilter("ignore")
    torch.set_num_threads(job["threads"])
    fn, model = _worker_fn(job)
    dtype = DTYPES[job["dtype"]]
    warm = example_inputs(model, job["batch_size"], min(WARMUP_SECONDS, job["seconds"]), dtype)
    inputs = example_inputs(model, job["batch_size"], job["seconds"], dtype)
    with torch.inference_mode():
        fn(*warm)
        before = start_peak_window()
        output = fn(*inputs)
        peak = _status_mib("VmHWM") - before
    del output
    return {"peak_extra_mib": peak, "baseline_mib": before}


class MemoryWorkers:
    """A clean process that has imported torch (and run nothing) and forks one child per measurement.

    Why not a new interpreter per case: importing torch takes seconds; a child forked from a
    process that has only imported it starts in milliseconds and is as fresh (its own heap, no
    model ever built, no thread pool started: forking is safe before the first parallel op).

    Example:
        >>> with MemoryWorkers(threads=2) as workers:      # doctest: +SKIP
        ...     workers.measure(job)
        41.3
    """

    def __init__(self, threads: int, preload: tuple[str, ...] = (), timeout: float = 900) -> None:
        self.threads, self.preload, self.timeout = threads, preload, timeout
        self.process: subprocess.Popen | None = None
        self.stderr = None

    def __enter__(self) -> MemoryWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> subprocess.Popen:
        threads = str(self.threads)
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
                   PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))  # fmt: skip
        self.stderr = tempfile.TemporaryFile()
        command = [sys.executable, "-m", "audiosep.bench.memory", "--serve", *self.preload]
        return subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                text=True, start_new_session=True)  # fmt: skip

    def measure(self, job: dict[str, Any]) -> float:
        """Extra RSS (MiB) of one pass of ``job`` in a fresh child process.

        Raises:
            RuntimeError: the child failed or took longer than the timeout (the message says why).
        """
        if self.process is None or self.process.poll() is not None:
            self.process = self._start()
        assert self.process.stdin is not None and self.process.stdout is not None  # noqa: S101 (Popen with PIPEs)
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            reason = (
                f"took over {self.timeout:.0f} s"
                if not ready
                else f"memory worker died: {self._last_error()}"
            )
            self.close()
            raise RuntimeError(reason)
        result = json.loads(line)
        if "error" in result:
            raise RuntimeError(result["error"])
        return float(result["peak_extra_mib"])

    def _last_error(self) -> str:
        if self.stderr is None:
            return "no output"
        self.stderr.seek(0)
        lines = [line for line in self.stderr.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else "no output"

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the server and its child, if any
            self.process.wait()
        self.process = None


def serve(preload: list[str]) -> None:
    """The server loop: one job (a JSON line) in, one forked child runs it, one JSON line out.

    ``preload``: modules to import first (peers' packages), so that children start fast.
    """
    import importlib
    import warnings

    warnings.simplefilter("ignore")
    for module in ["audiosep.bench.backends", "audiosep.optimize", "onnxruntime", *preload]:
        try:
            importlib.import_module(module)
        except ImportError:
            pass  # the child reports it if it needs it
    for line in sys.stdin:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: measure, send one line, leave without cleanup
            os.close(read)
            os.dup2(2, 1)  # anything a library prints goes to stderr, not into the protocol
            try:
                message = worker(json.loads(line))
            except Exception as err:  # noqa: BLE001 (reported to the parent as a failed measurement)
                message = {"error": " ".join(f"{type(err).__name__}: {err}".split())[:300]}
            os.write(write, (json.dumps(message) + "\n").encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            reply = pipe.read().strip()
        _, status = os.waitpid(pid, 0)
        if not reply:
            reply = json.dumps({"error": f"memory worker died (wait status {status})"})
        print(reply, flush=True)


def cuda_peak(fn: Callable[..., Tensor], inputs: tuple[Tensor, ...], device: torch.device) -> float:
    """Extra CUDA memory (MiB) that one pass of ``fn`` allocates at its peak."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        output = fn(*inputs)
        torch.cuda.synchronize(device)
    del output
    return (torch.cuda.max_memory_allocated(device) - before) / MIB


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2:])
    else:
        print(json.dumps(worker(json.loads(sys.argv[1]))))
