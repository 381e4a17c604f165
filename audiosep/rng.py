"""The process's RNG states (torch CPU and CUDA, NumPy, Python) as checkpoint-safe values.

Lightning does not save RNG states in its checkpoints; the tasks store these so a resumed run
draws what an unbroken one would (dropout, augmentation). The values are tensors, ints, floats,
strings and tuples only, so checkpoints still load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def collect_rng_states() -> dict[str, Any]:
    """torch (CPU and every CUDA device), NumPy and Python ``random`` states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                  float(cached)),
        "python": (int(version), tuple(int(v) for v in internal), gauss),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`collect_rng_states` returned (CUDA states only when the devices match)."""
    _restore(states, torch.default_generator, np.random, random)
    cuda = states.get("torch.cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def rng_states_problem(states: Any) -> str | None:
    """Why ``states`` is not what :func:`collect_rng_states` returns (tried on fresh generators, never the
    process's own); None if it is. For a resumed checkpoint, before training starts."""
    try:
        _restore(states, torch.Generator(), np.random.RandomState(), random.Random())
    except Exception as err:  # noqa: BLE001 - each library raises its own types for a malformed state
        return f"{type(err).__name__}: {str(err)[:120]}"
    return None


def _restore(states: Any, torch_generator: torch.Generator, numpy_random: Any, python_random: Any) -> None:
    """Set the torch CPU, NumPy and Python states of ``states`` into the given generators (the process's own:
    ``torch.default_generator``, the ``np.random`` and ``random`` modules; or fresh ones, to try them)."""
    torch_generator.set_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    numpy_random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    python_random.setstate((version, tuple(internal), gauss))
