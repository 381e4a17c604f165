"""Resume an interrupted ``audiosep bench``: every finished case and memory figure is kept on disk.

Why: a benchmark of three models at 1, 4 and 16 s with their peers runs for ten minutes or more, and
a Ctrl-C, a killed job or a crash in its last case lost every figure. :class:`CaseLog` keeps
``bench.partial.json`` in ``--out-dir``: the run's identity (its settings, the checkpoints' hashes, the
machine and the versions: what changes the figures) and the records of every finished case and peak
memory measurement, rewritten atomically after each one. A rerun with the same identity times only
the cases left; one with another identity is refused, since its figures would not be comparable
(deleting the file starts over). The file is removed once the outputs are written.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from audiosep.errors import UserError
from audiosep.io import atomic_write_text, file_sha256, read_json, source_digest

PARTIAL_FILE = "bench.partial.json"
PARTIAL_SCHEMA = "audiosep.bench.partial/1"


def run_identity(settings: Any, threads: int) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one: settings (less the progress bar), the
    checkpoints' SHA-256, the device, CPU and versions, the peers' included (a figure measured under other ones
    is another figure)."""
    import audiosep
    from audiosep.bench.measure import cpu_flags, cpu_name

    device = torch.device(settings.device)
    fields = asdict(settings)
    fields.pop("progress")
    identity = {
        "settings": fields | {"threads": threads},
        "checkpoints": {path: file_sha256(path) for path in settings.checkpoints},
        "machine": {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
            "cpu_flags": sorted(cpu_flags()),
            "torch": torch.__version__,
            "audiosep": audiosep.__version__,
            "audiosep_code": source_digest(),
            **{package: _version(package) for package in ("onnxruntime", "torchaudio", "speechbrain")},  # peers too
        },
    }
    return json.loads(json.dumps(identity))  # as it reads back from the file (tuples become lists)


def _version(package: str) -> str | None:
    """An installed package's version (from its metadata: no import), or None."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _differences(saved: Any, current: dict[str, Any]) -> list[str]:
    """Dotted names of the identity entries that differ (``settings.lengths``, ``machine.torch``)."""
    if not isinstance(saved, dict):
        return ["everything"]
    names = []
    for group, values in current.items():
        old = saved.get(group)
        if not isinstance(old, dict) or not isinstance(values, dict) or group == "checkpoints":
            names += [] if old == values else [group]
            continue
        names += [f"{group}.{key}" for key in sorted(set(values) | set(old)) if old.get(key) != values.get(key)]
    return names


def case_key(dtype: str, batch: int, seconds: float) -> str:
    """The log's key of one (dtype, batch size, length) case."""
    return f"{dtype} batch {batch} {seconds!r} s"


def record_key(record: dict[str, Any]) -> str:
    """The log's key of one record's memory figure: its model, backend and case."""
    return f"{record['model']} {record['backend']} " + case_key(record["dtype"], record["batch_size"], record["seconds"])


class CaseLog:
    """The finished cases and memory figures of one benchmark run, kept in ``path`` as they come.

    Raises:
        UserError: ``path`` holds a run with another identity (the message names what differs), or
            cannot be read as a partial benchmark.
    """

    def __init__(self, path: Path, identity: dict[str, Any]) -> None:
        self.path, self.identity = Path(path), identity
        self.cases: dict[str, list[dict[str, Any]]] = {}
        self.memory: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return
        state = read_json(self.path)
        if not isinstance(state, dict) or state.get("schema") != PARTIAL_SCHEMA:
            raise UserError(f"{self.path}: not a partial benchmark of this audiosep version; delete it to start over")
        differs = _differences(state.get("identity"), identity)
        if differs:
            raise UserError(f"{self.path}: an interrupted benchmark with other {', '.join(differs)}; rerun it as it "
                            "was to finish it, or delete the file to start over")  # fmt: skip
        cases, memory = state.get("cases"), state.get("memory")
        if not isinstance(cases, dict) or not isinstance(memory, dict):
            raise UserError(f"{self.path}: damaged (no cases or memory entries); delete it to start over")
        self.cases, self.memory = cases, memory

    @property
    def resumed(self) -> bool:
        """Whether an interrupted run's figures were read back."""
        return bool(self.cases or self.memory)

    def case(self, dtype: str, batch: int, seconds: float) -> list[dict[str, Any]] | None:
        """The records of a finished case (copies), or None."""
        records = self.cases.get(case_key(dtype, batch, seconds))
        return None if records is None else [dict(record) for record in records]

    def add_case(self, dtype: str, batch: int, seconds: float, records: list[dict[str, Any]]) -> None:
        """Keep a finished case's records (on disk before this returns)."""
        self.cases[case_key(dtype, batch, seconds)] = [dict(record) for record in records]
        self._save()

    def memory_of(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """The ``peak_memory_mib`` and ``memory`` entries measured for ``record``, or None."""
        return self.memory.get(record_key(record))

    def add_memory(self, record: dict[str, Any]) -> None:
        """Keep ``record``'s memory figure (on disk before this returns)."""
        self.memory[record_key(record)] = {key: record.get(key) for key in ("peak_memory_mib", "memory")}
        self._save()

    def _save(self) -> None:
        state = {"schema": PARTIAL_SCHEMA, "identity": self.identity, "cases": self.cases, "memory": self.memory}
        atomic_write_text(self.path, json.dumps(state, indent=1))

    def finish(self) -> None:
        """Forget the run (its outputs are written)."""
        self.path.unlink(missing_ok=True)
