"""Checkpoints that appear whole or not at all, even when the process is killed while saving.

Lightning's own ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file is
made by ``tempfile.mkstemp()`` in the *system* temp folder and then moved: when the checkpoint
folder is on another file system (a cluster's shared disk), the move is a copy, and a kill during
that copy leaves a truncated ``last.ckpt`` that ``--ckpt_path last`` would pick up. Nothing is
fsync'ed either, so a node crash can leave an empty file.

:class:`AtomicCheckpointIO` writes local checkpoints to ``.<name>.XXXX.tmp`` in the checkpoint's
own folder, fsyncs it, renames it over the target (atomic on POSIX) and fsyncs the folder. A kill
leaves at most that temp file, whose suffix is not ``.ckpt``, so Lightning never takes it for a
checkpoint. Remote URLs (``s3://`` ...) go to Lightning's implementation unchanged.
``audiosep fit`` installs it by default (:mod:`audiosep.training_cli`).
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO

from audiosep.errors import UserError
from audiosep.io import atomic_write_bytes


def _is_local(path: str | os.PathLike) -> bool:
    text = str(path)
    return "://" not in text or text.startswith("file://")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_atomically(checkpoint: dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` ``checkpoint`` to ``path`` through a fsync'ed temp file in the same folder."""
    target = Path(str(path).removeprefix("file://"))
    atomic_write_bytes(target, lambda buffer: torch.save(checkpoint, buffer), fsync=True)
    _fsync_dir(target.parent)
    return target


# What Lightning's sharded strategies write in a checkpoint folder (lightning 2.6): FSDP's ``meta.pt`` beside
# torch.distributed.checkpoint's ``.metadata`` and ``*.distcp`` shards; DeepSpeed's ``latest`` and
# ``zero_to_fp32.py`` beside the ``checkpoint`` tag folder of ``*.pt`` states.
FSDP_FILES = re.compile(r"meta\.pt|\.metadata|[^/]+\.distcp")
DEEPSPEED_FILES = re.compile(r"latest|zero_to_fp32\.py|checkpoint/[^/]+\.pt")


def is_sharded_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` (a real folder, not a link) is an FSDP or DeepSpeed checkpoint of Lightning's and holds
    nothing else: only regular files of those names, ``meta.pt`` or ``latest`` among them.

    Why so strict: Lightning replaces top-k checkpoints by removing them, and a sharded one is a folder;
    a folder holding anything more (a link, a user's file) is never removed.
    """
    if folder.is_symlink() or not folder.is_dir():
        return False
    names = []
    for entry in folder.rglob("*"):
        if entry.is_symlink() or not (entry.is_file() or (entry.is_dir() and entry.name == "checkpoint")):
            return False
        if entry.is_file():
            names.append(entry.relative_to(folder).as_posix())
    fsdp = "meta.pt" in names and all(FSDP_FILES.fullmatch(name) for name in names)
    deepspeed = "latest" in names and all(DEEPSPEED_FILES.fullmatch(name) for name in names)
    return fsdp or deepspeed


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic and durable (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        save_atomically(checkpoint, path)

    def remove_checkpoint(self, path) -> None:
        """Remove one local checkpoint file (or a link to one) or sharded checkpoint folder
        (:func:`is_sharded_checkpoint`); never another folder, a file not named ``*.ckpt`` or a path with
        a ``..`` part (Lightning's test that it lies in the checkpoint folder keeps them).

        Lightning removes the checkpoints it replaces with ``fs.rm(path, recursive=True)``, and the paths
        come from the resumed file's callback state: a crafted one deleted any folder (reviewer). The
        state is checked before the restore (:func:`audiosep.training_cli.callbacks_problem`); this is the
        second wall. What is refused is left alone, with a warning.
        """
        if not _is_local(path):
            super().remove_checkpoint(path)
            return
        target = Path(str(path).removeprefix("file://"))
        if not target.name.endswith(".ckpt") or ".." in target.parts:
            warnings.warn(f"audiosep: not removing {target}: not a checkpoint file", stacklevel=2)
        elif is_sharded_checkpoint(target):
            shutil.rmtree(target)
        elif target.exists() and not target.is_symlink() and not target.is_file():
            warnings.warn(f"audiosep: not removing {target}: not a checkpoint file, nor a sharded checkpoint folder "
                          "holding only FSDP's or DeepSpeed's files", stacklevel=2)  # fmt: skip
        else:
            target.unlink(missing_ok=True)


LAST_EVERY_STEPS = 25  # training steps between saves of a long job's last.ckpt (a few ms each for these models)


class LastCheckpoint(L.Callback):
    """Save ``path`` every :data:`LAST_EVERY_STEPS` training steps, after each validation and when training ends
    (pruning's phases, the norm study's runs: jobs that resume from their last step).

    Why not ``ModelCheckpoint(save_last=True, save_top_k=0)``: Lightning writes ``last.ckpt`` only beside a
    top-k save, so with none it came when the search ended, and a killed search started over from step 0.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step % LAST_EVERY_STEPS == 0:
            trainer.save_checkpoint(self.path, weights_only=False)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save again after a validation: resumed from the save before it, Lightning skipped it (its curve point was
        lost: diff review)."""
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            trainer.save_checkpoint(self.path, weights_only=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)


def resume_last(
    root: Path, task: L.LightningModule, same_run: Callable[[dict[str, Any]], str | None] | None = None,
    remedy: str = "delete it to redo this part from its start",
) -> str | None:
    """``root/last.ckpt`` of an interrupted job, if there is one; a damaged one, one of other weight shapes, or one
    ``same_run`` finds wrong (the loaded checkpoint -> why, or None) is a one-line error naming it, ending in
    ``remedy``."""
    from audiosep.training_cli import checkpoint_problem, weight_shapes

    last = root / "last.ckpt"
    if not last.is_file():
        return None
    problem = checkpoint_problem(last, weight_shapes(task), same_run=same_run)
    if problem is not None:
        raise UserError(f"{last}: {problem}; {remedy}")
    return str(last)
