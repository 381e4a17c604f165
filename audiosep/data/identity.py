"""What data a run trains on, as a record a resumed run must match: the data module's class, the LibriMix
folder as it resolves, the arguments that choose data and order, and a digest of each metadata CSV.

Why: a path as typed is not an identity (a relative root names other data from another folder; a data
folder regenerated in place keeps its path). Used by ``audiosep fit``'s resume check, ``audiosep prune``'s
work folder and ``audiosep bench sweep``'s training records.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

from audiosep.io import file_sha256

# Data-module arguments that change how data is loaded, never which data or in what order.
LOADING_ONLY = ("num_workers", "dm_cache_dir")
PATH_ARGUMENTS = ("librispeech_root", "wham_root")


def as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so a stored record compares equal."""
    return json.loads(json.dumps(value, default=str))


def librimix_metadata_csvs(datamodule: Any) -> dict[str, Path]:
    """The metadata CSV of each split ``datamodule`` reads (train parts, dev, test), by split name."""
    from audiosep.data.librimix import metadata_csv, resolve_librimix_dir

    base = resolve_librimix_dir(datamodule.root, datamodule.n_src, datamodule.sample_rate, datamodule.mode)
    splits = [*datamodule.train_split.split("+"), "dev", "test"]
    return {split: metadata_csv(base, split, datamodule.task) for split in splits}


def data_identity(datamodule: Any) -> dict[str, Any] | None:
    """The data a run trains on: resolved folder, arguments (n_src, rate, split ...) and CSV digests.

    Only :class:`~audiosep.data.librimix.LibriMixDataModule` is fingerprinted (the one ``audiosep prune``
    accepts); another module is named by class. The CSVs list every mixture with its length, so
    data regenerated with another seed or split differs; the audio files themselves are not read.
    """
    from audiosep.data.librimix import LibriMixDataModule, resolve_librimix_dir

    if datamodule is None:
        return None
    name = f"{type(datamodule).__module__}.{type(datamodule).__qualname__}"
    if not isinstance(datamodule, LibriMixDataModule):
        return {"class": name}
    arguments = {
        key: getattr(datamodule, key)
        for key in inspect.signature(LibriMixDataModule.__init__).parameters
        if key not in ("self", "root", *LOADING_ONLY)
    }
    for key in PATH_ARGUMENTS:
        if arguments.get(key) is not None:
            arguments[key] = os.path.abspath(os.path.expanduser(arguments[key]))
    folder = resolve_librimix_dir(datamodule.root, datamodule.n_src, datamodule.sample_rate, datamodule.mode)
    digests = {split: file_sha256(csv) if csv.is_file() else None for split, csv in librimix_metadata_csvs(datamodule).items()}
    return as_json({"class": name, "folder": os.path.abspath(folder), "arguments": arguments, "metadata_sha256": digests})
