"""``audiosep fit|validate|test``: LightningCLI over our tasks and data modules.

Recipes are LightningCLI YAML whose keys are constructor arguments (typos fail at parse time).
``--config`` also accepts a recipe shipped with the package, e.g. ``demo/convtasnet_tiny.yaml``.
Checkpoints are saved with :class:`~audiosep.checkpoint_io.AtomicCheckpointIO` unless the recipe
brings its own ``CheckpointIO`` plugin. ``--ckpt_path last`` finds the newest ``last*.ckpt`` (or
SLURM-requeue ``hpc_ckpt_N.ckpt``) of any earlier run below ``--trainer.default_root_dir``
(Lightning alone looks only in the new run's own, still empty, ``version_N/checkpoints``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins import TorchCheckpointIO

from audiosep.checkpoint import LIGHTNING_KEY, tensor_problem, zip_problem
from audiosep.convert.untrusted import MAX_YAML_INT_CHARS, MappingKeys
from audiosep.errors import UserError, brief_repr, one_line
from audiosep.io import atomic_write_text, read_json

SOURCE_RECIPES = Path(__file__).resolve().parents[1] / "recipes"
EXTRA_IMPORTS_ENV = "AUDIOSEP_IMPORT_ALLOWLIST"  # comma-separated import paths a user adds (their own callbacks)
# The only classes a recipe, or a --key value, may name: jsonargparse imports nothing else (it refuses
# before importing). Why a closed list: a recipe is a file, and files are data; LightningCLI alone
# would import any module and call any function a YAML names (e.g. a LambdaCallback's hooks).
ALLOWED_IMPORTS = (
    "audiosep.tasks.separation.SeparationTask", "audiosep.tasks.asr.ASRTask",
    "audiosep.data.librimix.LibriMixDataModule", "audiosep.data.asr.ASRDataModule",
    "audiosep.nn.features.LogMelFeatures", "audiosep.nn.features.SpecAugment", "audiosep.nn.features.SpecCutout",
    "audiosep.optim.WarmupCosineLR", "audiosep.optim.NovoGrad", "audiosep.checkpoint_io.AtomicCheckpointIO",
    "torch.optim",  # optimizers and schedulers: classes only take numbers and parameter groups
    "lightning.pytorch.cli.ReduceLROnPlateau",
    *(f"lightning.pytorch.callbacks.{name}" for name in (
        "ModelCheckpoint", "EarlyStopping", "LearningRateMonitor", "TQDMProgressBar", "RichProgressBar",
        "ModelSummary", "RichModelSummary", "StochasticWeightAveraging", "GradientAccumulationScheduler", "Timer",
        "DeviceStatsMonitor", "OnExceptionCheckpoint")),
    "lightning.pytorch.loggers.CSVLogger", "lightning.pytorch.loggers.TensorBoardLogger",
    "lightning.pytorch.strategies", "lightning.pytorch.plugins", "lightning.fabric.plugins",
)  # fmt: skip


def packaged_recipe(name: str) -> Path | None:
    """Path of a shipped recipe such as ``demo/convtasnet_tiny.yaml``, if any.

    Installed wheels carry the recipes as ``audiosep.recipes``; a source checkout (where ``audiosep``
    is imported from the working tree) has them in the top-level ``recipes/`` folder.
    """
    try:
        root = Path(str(resources.files("audiosep.recipes")))
    except ModuleNotFoundError:
        root = SOURCE_RECIPES
    candidate = root.joinpath(*Path(name).parts)
    return candidate if candidate.is_file() else None


def resolve_config_paths(argv: list[str]) -> list[str]:
    """Replace ``--config NAME`` that is not a file by the packaged recipe of that name."""
    resolved = list(argv)
    for i, arg in enumerate(resolved):
        if arg == "--config" and i + 1 < len(resolved):
            value = resolved[i + 1]
        elif arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        else:
            continue
        if Path(value).is_file():
            read_recipe_yaml(Path(value))  # its errors name the file
            continue
        recipe = packaged_recipe(value.removeprefix("recipes/"))
        if recipe is None:
            raise UserError(f"{value}: recipe not found (neither a file nor a recipe shipped with audiosep)")
        if arg == "--config":
            resolved[i + 1] = str(recipe)
        else:
            resolved[i] = f"--config={recipe}"
    return resolved


def read_recipe_yaml(path: Path) -> Any:
    """A recipe file's YAML, read as ``fit`` reads it (:func:`yaml_without_aliases`); a file that is not UTF-8
    YAML is one error naming it, the line and the column.

    Why: jsonargparse parses the file's text, so its own message names ``"<unicode string>"``, not the file.
    """
    import yaml

    try:
        return yaml_without_aliases(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = "" if mark is None else f", line {mark.line + 1}, column {mark.column + 1}"
        raise UserError(f"{path}: not valid YAML ({getattr(err, 'problem', None) or one_line(err, 120)}{where})") from None


PARSER_ERROR_CHARS = 600  # room for a list of valid choices, not for a config dump


class OneLineErrorParser(LightningArgumentParser):
    """LightningCLI's parser whose usage errors are one ``audiosep: error:`` line (exit 2), as every
    other command's, instead of the usage text, a parser excerpt and the value given."""

    def error(self, message: str, ex: Exception | None = None) -> Any:
        if not self.exit_on_error:  # a caller that handles ArgumentError itself
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"audiosep: error: {one_line(message, PARSER_ERROR_CHARS)} (`{prog} --help` lists the options)\n")
        self.exit(2)


class AudiosepCLI(LightningCLI):
    """LightningCLI whose trainer saves checkpoints atomically (unless a plugin says otherwise)."""

    def instantiate_trainer(self, **kwargs) -> Trainer:
        from audiosep.checkpoint_io import AtomicCheckpointIO

        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def _add_configure_optimizers_method_to_model(self, subcommand: str | None) -> None:
        """Lightning's, with torch's refusal of the optimizer or scheduler settings (``Invalid learning rate:
        -1.0``) as one error line instead of a traceback (reviewer): it builds them here, before any work."""
        try:
            super()._add_configure_optimizers_method_to_model(subcommand)
        except ValueError as err:
            raise UserError(f"optimizer or lr_scheduler settings: {one_line(err)}") from None

    def _parse_ckpt_path(self) -> None:
        """Take no configuration from ``--ckpt_path``'s ``hyper_parameters``: the recipe and the command line decide.

        Lightning merges them into the parsed config, so a downloaded checkpoint could set the task's
        arguments (an output CSV path: any file overwritten) or swap the model its own shape check then
        agrees with. A checkpoint supplies weights and training state only.
        """

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        kwargs["weights_only"] = True  # a recipe's `weights_only: false` would let a checkpoint's pickle run code
        if kwargs.get("ckpt_path") is not None:
            checked = self._checked_ckpt_path(str(kwargs["ckpt_path"]), resume=subcommand == "fit")
            kwargs["ckpt_path"] = None if checked is None else str(checked)
        elif subcommand in ("validate", "test"):  # the scores would be those of freshly initialised weights
            print(f"audiosep: warning: no --ckpt_path: {subcommand} scores the model as the recipe builds it "
                  "(untrained, unless the recipe loads a model file)", file=sys.stderr)  # fmt: skip
        return kwargs

    def _checked_ckpt_path(self, ckpt_path: str, resume: bool = True) -> Path | None:
        """``--ckpt_path`` as Lightning should get it: a checked local file, resolved, or None for ``last``
        when none of this model is found yet (training starts from scratch).

        ``resume`` (``fit``): the checkpoint must come from a run on this data too (``validate`` and ``test``
        score it on any data, with its model's arguments).

        Raises:
            UserError: a URL, a Lightning keyword audiosep does not run (``best``, ``hpc``, ``registry``),
                a folder, or a file that is not a training checkpoint of the recipe's model (or, resumed, of
                its data).
        """
        shown = one_line(ckpt_path, 200)
        # the model's arguments always; the data where a run goes on (validate/test score it on any data)
        datamodule = self.datamodule if resume else None
        same_run = functools.partial(other_run_problem, model=getattr(self.model, "model", None), datamodule=datamodule)
        if "://" in ckpt_path:
            raise UserError(
                f"--ckpt_path {shown}: a URL; only local checkpoint files are read (give the file's path; "
                "download a remote one first)"
            )
        if ckpt_path in ("best", "hpc", "registry") or ckpt_path.startswith("registry:"):
            raise UserError(
                f"--ckpt_path {shown}: not used by audiosep's training commands; give a checkpoint file, or "
                "'last' (the newest last.ckpt or SLURM hpc_ckpt_N.ckpt below --trainer.default_root_dir)"
            )
        if ckpt_path == "last":  # this model's newest; one with NaN weights or a bad state is this run's: refused
            found = find_last_checkpoint(self.trainer.default_root_dir, weight_shapes(self.model))
            if found is None:  # not "last": Lightning would then look for one itself, unchecked
                print(f"audiosep: --ckpt_path last: no checkpoint of this model below "
                      f"{self.trainer.default_root_dir}; training starts from scratch", file=sys.stderr)  # fmt: skip
                return None
            problem = checkpoint_problem(found, weight_shapes(self.model), same_run=same_run)
            if problem:
                raise UserError(f"--ckpt_path last ({found}): {problem}")
            return found.resolve()
        path = Path(ckpt_path).expanduser()
        if path.is_dir():
            raise UserError(f"--ckpt_path {shown}: a folder; give a checkpoint file (e.g. its last.ckpt)")
        problem = checkpoint_problem(path, weight_shapes(self.model), same_run=same_run)
        if problem:
            raise UserError(f"--ckpt_path {shown}: {problem}")
        return path.resolve()  # Lightning takes a relative path starting with "http" for a URL


def other_run_problem(checkpoint: dict[str, Any], model: Any, datamodule: Any) -> str | None:
    """Why ``checkpoint`` is not a checkpoint of this run: its model's class or constructor arguments, or its
    data (:data:`audiosep.tasks.guards.DATA_KEY`, where saved; unless ``datamodule`` is None), differ from
    ``model``'s and ``datamodule``'s; None where they are the same. A resume with other data, a changed norm or
    batch size went on silently (reviewer)."""
    from audiosep.data.identity import as_json, data_identity
    from audiosep.models.base import RebuildableModule
    from audiosep.tasks.guards import DATA_KEY

    saved, now = {}, {}
    record = checkpoint.get(LIGHTNING_KEY)
    if isinstance(model, RebuildableModule) and isinstance(record, dict):
        saved["model"] = {"class_path": record.get("class_path"), "init_args": record.get("init_args")}
        now["model"] = {"class_path": model.class_path(), "init_args": model.init_args}
    if datamodule is not None and isinstance(checkpoint.get(DATA_KEY), dict):  # older checkpoints hold none
        saved["data"], now["data"] = _by_contents(checkpoint[DATA_KEY]), _by_contents(data_identity(datamodule))
    try:
        differences = list(_differences(as_json(saved), as_json(now)))
    except RecursionError:  # a crafted record nested 100 000 deep (diff review)
        return "its model or data record is nested too deeply to be one of audiosep's"
    changes = [f"{key} {brief_repr(old, 100)} -> {brief_repr(new, 100)}" for key, old, new in differences]
    if not changes:
        return None
    return (f"it was trained with other settings ({'; '.join(changes[:3])}{' ...' if len(changes) > 3 else ''}); resume "
            "with the recipe and data it was trained with, or start a new run in another --trainer.default_root_dir "
            "(to fine-tune its weights, pass its model file as the recipe's model)")  # fmt: skip


def _by_contents(record: Any) -> Any:
    """A data record without its folder where its metadata digests name the data: the same data reached through a
    link, or copied to a job's scratch disk, is the same run's (diff review)."""
    digests = record.get("metadata_sha256") if isinstance(record, dict) else None
    if isinstance(digests, dict) and any(digest is not None for digest in digests.values()):
        return {key: value for key, value in record.items() if key != "folder"}
    return record


def _differences(saved: Any, now: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """``(dotted key, saved, now)`` where two JSON records differ (dicts compared key by key, to a depth of 8)."""
    if isinstance(saved, dict) and isinstance(now, dict) and prefix.count(".") < 8:
        for key in sorted(saved.keys() | now.keys(), key=str):
            yield from _differences(saved.get(key), now.get(key), f"{prefix}.{key}" if prefix else str(key))
    elif saved != now:
        yield prefix, saved, now


LAST_CHECKPOINT = re.compile(r"^(last(-v\d+)?|hpc_ckpt_\d+)\.ckpt$")


def find_last_checkpoint(root: str | Path, expected: dict[str, tuple[int, ...]] | None = None) -> Path | None:
    """The most recently written ``last.ckpt`` (or ``last-vN.ckpt``, or the ``hpc_ckpt_N.ckpt`` that
    Lightning's SLURM requeue saves) below ``root``, if any; with ``expected`` (weight name -> shape),
    the newest one that is a readable training checkpoint of that model.

    Temp files of an interrupted save (``.last.ckpt.XXXX.tmp``) never match. Why ``expected``: the
    search covers every folder below ``root`` (the working directory by default), where other jobs
    (another recipe, a pruning run) keep their own ``last.ckpt``.
    """
    candidates = [p for p in Path(root).rglob("*.ckpt") if LAST_CHECKPOINT.match(p.name) and p.is_file()]
    candidates.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
    if expected is None:
        return candidates[0] if candidates else None
    # the model decides which is this run's (the file's state is checked after: a bad one is refused, not passed over
    # for an older run's)
    return next((path for path in candidates if checkpoint_problem(path, expected, finite=False, state=False) is None), None)


def checked_last_checkpoint(
    root: str | Path, task: torch.nn.Module, datamodule: Any, remedy: str
) -> Path | None:
    """:func:`find_last_checkpoint` of ``task``'s weights below ``root``, checked as ``fit --ckpt_path`` checks it
    (finite weights, optimizer, loops, callbacks, and that it is this run's: the model's constructor arguments and
    the data; :func:`checkpoint_problem`); a bad one is a one-line :class:`UserError` naming it and ending in
    ``remedy``.

    Why: the newest match was resumed after a weight-shape check only (``demo``, ``bench sweep``), so a NaN
    learning rate trained NaN weights, and a saved best path named the model that was shipped.
    """
    expected = weight_shapes(task)
    resume = find_last_checkpoint(root, expected)
    if resume is None:
        return None
    same_run = functools.partial(other_run_problem, model=getattr(task, "model", None), datamodule=datamodule)
    if (problem := checkpoint_problem(resume, expected, same_run=same_run)) is not None:
        raise UserError(f"{resume}: {problem}; {remedy}")
    return resume


def weight_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """``model``'s state-dict names and shapes: what a checkpoint must hold to resume it."""
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def claim_training_folder(root: Path, identity: dict[str, Any], record: str = "run.json") -> dict[str, Any]:
    """``root/record`` as stored (``identity`` written there first); a folder of another identity is refused.

    Why: a rerun resumes from the ``last.ckpt`` below ``root``, which is only right for the same run
    (the same seed and data, the same recipe and budget); the record may hold more keys (results).
    """
    path = root / record
    if path.exists():
        stored = read_json(path)
        if not isinstance(stored, dict) or {key: stored.get(key) for key in identity} != identity:
            raise UserError(f"{path}: a run of other settings ({', '.join(identity)}); use another output folder")
        return stored
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(identity))
    return identity


def checkpoint_problem(path: Path, expected: dict[str, tuple[int, ...]], finite: bool = True,
                       state: bool = True, same_run: Callable[[dict[str, Any]], str | None] | None = None) -> str | None:  # fmt: skip
    """Why ``path`` is not a Lightning training checkpoint of a model with weights ``expected``; None if it is.

    Checked before Lightning reads it, which otherwise ends in a multi-line traceback. ``finite``: also
    refuse NaN or infinite weights (with them every step was skipped to the end of the run). ``state``: also
    check the training state beside the weights (:func:`resume_state_problem`). ``same_run``: why the checkpoint
    is another run's (:func:`other_run_problem`), or None.
    """
    if not path.is_file():
        return "no such file"
    try:
        with path.open("rb") as file:  # a compressed zip would be inflated in memory by torch.load
            problem = zip_problem(file)
        if problem is not None:
            return f"not a readable checkpoint ({problem})"
        # not mmap: it takes a storage record shorter than its tensor (the neighbouring bytes are read), which
        # Lightning's own load then refuses with a traceback
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (torch raises many types for damaged or foreign files)
        return f"not a readable checkpoint ({one_line(err, 120)})"
    if not isinstance(checkpoint, dict) or "pytorch-lightning_version" not in checkpoint:
        return "not a Lightning training checkpoint (a model file is used with --model.model or audiosep infer)"
    weights = checkpoint.get("state_dict")
    if not isinstance(weights, dict):
        return "holds no state_dict of weights"
    stored = {name: tuple(t.shape) for name, t in weights.items() if isinstance(t, torch.Tensor)}
    if stored != expected:
        differ = sorted(set(stored) ^ set(expected)) or [k for k in expected if stored[k] != expected[k]]
        return f"holds another model than the recipe's (e.g. {brief_repr(differ[:3])}); check the recipe and its overrides"
    for name, tensor in weights.items() if finite else ():  # a NaN weight made every step a skipped one
        problem = tensor_problem(tensor) if isinstance(tensor, torch.Tensor) else None
        if problem:
            return f"its weight {brief_repr(name)} {problem}"
    problem = resume_state_problem(checkpoint) if state else None
    return problem or (same_run(checkpoint) if same_run is not None else None)


def resume_state_problem(checkpoint: dict[str, Any]) -> str | None:
    """Why the training state audiosep saves beside the weights cannot be restored; None if it can.

    Checked before Lightning reads the file: a malformed RNG state, skipped-step count or data module position
    (a damaged or hand-edited file) otherwise fails in the restore hooks with a traceback.
    """
    from audiosep.rng import rng_states_problem
    from audiosep.tasks.guards import NONFINITE_KEY, RNG_KEY

    if RNG_KEY in checkpoint and (problem := rng_states_problem(checkpoint[RNG_KEY])):
        return f"its saved RNG states cannot be restored ({problem})"
    if NONFINITE_KEY in checkpoint and not _count(checkpoint[NONFINITE_KEY]):
        return f"its {NONFINITE_KEY} is {brief_repr(checkpoint[NONFINITE_KEY])}, not a count"
    for key, state in checkpoint.items():  # Lightning keeps a data module's state under its class name
        if key.endswith("DataModule") and not (isinstance(state, dict) and all(map(_count, state.values()))):
            return f"its {key} position is {brief_repr(state)}, not counts of epochs and batches"
    return (
        lightning_version_problem(checkpoint["pytorch-lightning_version"])
        or callbacks_problem(checkpoint.get("callbacks", {})) or loops_problem(checkpoint.get("loops", {}))
        or schedulers_problem(checkpoint.get("lr_schedulers", []))
        or optimizers_problem(checkpoint.get("optimizer_states", []))
    )  # fmt: skip


OLDEST_LIGHTNING = "2.0"  # audiosep's checkpoints come from Lightning 2; its migration of 0.x ones failed (KeyError)


def lightning_version_problem(version: Any) -> str | None:
    """Why a checkpoint's ``pytorch-lightning_version`` cannot be resumed from (Lightning parses it, and migrates
    older layouts, with a traceback on failure); None if it can."""
    from packaging.version import InvalidVersion, Version

    try:
        parsed = Version(version) if isinstance(version, str) else None
    except InvalidVersion:
        parsed = None
    if parsed is None:
        return f"its pytorch-lightning_version {brief_repr(version, 60)} is not a version"
    if parsed < Version(OLDEST_LIGHTNING):
        return f"it was saved by Lightning {version}: audiosep resumes checkpoints of Lightning {OLDEST_LIGHTNING} and newer"
    return None


# Optimizer settings that are rates, sizes or decays (never negative), and the moment tensors that are sums of
# squares (negative ones made every weight NaN with exit 0; reviewer).
NONNEGATIVE_SETTINGS = ("lr", "initial_lr", "eps", "weight_decay", "momentum", "dampening", "lr_decay", "alpha")
SQUARE_STATES = ("exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum", "acc_delta", "exp_inf")


def optimizers_problem(states: Any) -> str | None:
    """Why the saved optimizer states cannot be restored; None if they can.

    Checked: one ``{"state", "param_groups"}`` dict per optimizer; settings that are numbers finite (rates and
    decays not negative, ``betas`` in [0, 1)); state tensors finite (sums of squares not negative) and ``step``
    counts numbers. A NaN learning rate or a negative second moment trained to NaN weights with exit 0, and a
    text where a number belongs failed mid-run with a traceback (reviewer). Which settings the recipe's
    optimizer knows is checked when it exists (:meth:`audiosep.tasks.guards.TrainingGuards.check_resumed_optimizers`).
    """
    if not isinstance(states, list) or not all(isinstance(state, dict) for state in states):
        return f"its optimizer_states are {brief_repr(states)}, not one state per optimizer"
    for index, state in enumerate(states):
        groups, moments = state.get("param_groups"), state.get("state")
        if not isinstance(groups, list) or not all(isinstance(group, dict) for group in groups) or not isinstance(moments, dict):
            return f"its optimizer state {index} is not param_groups and state"
        for group in groups:
            for key, value in group.items():
                if (problem := _setting_problem(key, value)) is not None:
                    return f"its optimizer state {index} has {brief_repr(key, 40)} {brief_repr(value, 60)}: {problem}"
        for param, values in moments.items():
            if not isinstance(values, dict):
                return f"its optimizer state {index} holds {brief_repr(values)} for parameter {brief_repr(param)}"
            for key, value in values.items():
                if (problem := _moment_problem(key, value)) is not None:
                    return f"its optimizer state {index}, parameter {brief_repr(param)}: {brief_repr(key, 40)} {problem}"
    return None


def _setting_problem(key: str, value: Any) -> str | None:
    """Why one optimizer setting cannot be trained with; None if it can. ``None`` stands for "derived" in a
    number's place (Adafactor's ``eps=(None, 1e-3)``, a relative-step ``lr=None``); flags and texts are torch's
    to read, except where a rate, decay or beta belongs."""
    if key == "params":
        return None if isinstance(value, list) and all(map(_count, value)) else "not parameter indices"
    items = list(value) if isinstance(value, list | tuple) else [value]
    items = [float(v) if isinstance(v, torch.Tensor) and v.numel() == 1 and v.is_floating_point() else v for v in items]
    numbers = [v for v in items if _number(v)]
    if key in (*NONNEGATIVE_SETTINGS, "betas") and len(numbers) + sum(v is None for v in items) < len(items):
        return "not a number"
    if not all(map(_finite_number, numbers)):
        return "not finite numbers"
    if key in NONNEGATIVE_SETTINGS and numbers and min(numbers) < 0:
        return "negative"
    if key == "betas" and not all(0 <= beta < 1 for beta in numbers):
        return "not in [0, 1)"
    return None


def _moment_problem(key: Any, value: Any) -> str | None:
    """Why one tensor or count of a parameter's optimizer state cannot be trained with; None if it can."""
    if key == "step":
        number = float(value) if isinstance(value, torch.Tensor) and value.numel() == 1 else value
        return None if _finite_number(number) and number >= 0 else f"is {brief_repr(value, 40)}, not a count"
    if not isinstance(value, torch.Tensor) or not (value.is_floating_point() or value.is_complex()):
        return None
    if (problem := tensor_problem(value)) is not None:
        return problem
    if key in SQUARE_STATES and value.numel() and float(value.min()) < 0:
        return "is negative, though a sum of squares"
    return None


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


CHECKPOINT_PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")
CALLBACK_COUNT_KEYS = ("wait_count", "stopped_epoch", "patience")  # EarlyStopping's


def _score(value: Any) -> bool:
    """A monitored score as Lightning saves it: None, a number or a one-value tensor (inf before the first; an
    int tensor for ``monitor="step"``)."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and value.dtype != torch.bool and not value.is_complex()
    return value is None or _number(value)


def _no_parent_steps(path: str) -> bool:
    """Whether ``path`` has no ``..`` part: Lightning's folder test keeps them (``dirpath/../..`` passed it)."""
    return ".." not in Path(path).parts


def _checkpoint_in(path: Any, folder: str) -> bool:
    """Whether ``path`` is empty (none yet) or names a ``.ckpt`` file below ``folder`` (a ``filename`` with a
    ``/`` makes subfolders), links resolved, and neither holds a ``..`` part."""
    if path == "":
        return True
    if not isinstance(path, str) or not path.endswith(".ckpt") or not (_no_parent_steps(path) and _no_parent_steps(folder)):
        return False
    real, real_folder = os.path.realpath(path), os.path.realpath(folder)
    return real != real_folder and os.path.commonpath([real, real_folder]) == real_folder


def model_checkpoint_problem(state: Any) -> str | None:
    """Why a ``ModelCheckpoint`` state cannot be restored; None if it can.

    Why: Lightning restores its paths (the last, the k-th best, the top-k files) from the file and later
    removes them, recursively, when it replaces them; its test that they lie in the checkpoint folder does
    not resolve ``..``, and a state without ``dirpath`` skips the test. A crafted file made ``audiosep fit``
    delete any folder (reviewer), and ``dirpath`` itself comes from the file. So every path must be a ``.ckpt``
    file below the saved ``dirpath``, and none of them may hold a ``..``.
    """
    if not isinstance(state, dict) or not isinstance(state.get("dirpath"), str):
        return "has no checkpoint folder (dirpath)"
    folder = state["dirpath"]
    paths = [state.get(key, "") for key in CHECKPOINT_PATH_KEYS]
    best = state.get("best_k_models", {})
    if not isinstance(best, dict) or not all(map(_score, best.values())):
        return f"has best_k_models {brief_repr(best)}, not checkpoint files and their scores"
    outside = [path for path in [*paths, *best] if not _checkpoint_in(path, folder)]
    if outside:
        return f"names {brief_repr(outside[0])}, not a .ckpt file below its checkpoint folder {brief_repr(folder)}"
    scores = [state.get(key) for key in ("best_model_score", "current_score", "kth_value")]
    if not all(map(_score, scores)):
        return f"has scores {brief_repr(scores)}, not numbers"
    return None


def callbacks_problem(callbacks: Any) -> str | None:
    """Why the saved callback states cannot be restored (checkpoint paths, early-stopping counts); None if they can."""
    if not isinstance(callbacks, dict):
        return f"its callbacks state is {brief_repr(callbacks)}, not one state per callback"
    for name, state in callbacks.items():
        if str(name).startswith("ModelCheckpoint") and (problem := model_checkpoint_problem(state)):
            return f"its {brief_repr(name, 60)} state {problem}"
        if not isinstance(state, dict) or not all(_count(state[key]) for key in CALLBACK_COUNT_KEYS if key in state):
            return f"its {brief_repr(name, 60)} state is {brief_repr(state)}, not counts"
    return None


MAX_STATE_DEPTH = 64  # Lightning's loop state is about 6 dicts deep


def _leaves(state: Any) -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every non-dict value below ``state``, walked without recursion.

    Raises:
        ValueError: dicts nested more than :data:`MAX_STATE_DEPTH` deep (a file's 100 000 levels ended in a
            ``RecursionError`` traceback; reviewer).
    """
    pending: list[tuple[str, Any, int]] = [("", state, 0)]
    while pending:
        prefix, value, depth = pending.pop()
        if not isinstance(value, dict):
            yield prefix, value
        elif depth >= MAX_STATE_DEPTH:
            raise ValueError(f"nested more than {MAX_STATE_DEPTH} deep")
        else:
            pending.extend((f"{prefix}.{key}" if prefix else str(key), item, depth + 1) for key, item in reversed(value.items()))


PROGRESS_KEYS = ("ready", "started", "processed", "completed", "_batches_that_stepped")


def loops_problem(loops: Any) -> str | None:
    """Why the saved loop progress cannot be restored (its counters must be counts); None if it can.

    Only the counters are checked: other entries (a stateful data loader's state, an older Lightning's
    layout that it migrates on loading) are Lightning's to read.
    """
    if not isinstance(loops, dict):
        return f"its loops state is {brief_repr(loops)}, not the loops' progress"
    try:
        for key, value in _leaves(loops):
            if key.rsplit(".", 1)[-1] in PROGRESS_KEYS and not _count(value):
                return f"its loop progress {brief_repr(key, 80)} is {brief_repr(value)}, not a count"
    except ValueError as err:
        return f"its loops state is {err}"
    return None


SCHEDULER_NUMBERS = ("last_epoch", "_step_count", "base_lrs", "_last_lr")


def schedulers_problem(schedulers: Any) -> str | None:
    """Why the saved learning-rate scheduler states cannot be restored; None if they can.

    torch restores one by ``scheduler.__dict__.update(state)``: a file could set any attribute (the
    optimizer it steps included), and a text where a count belongs failed the run mid-training. Nested
    states (SequentialLR's, ChainedScheduler's) are checked alike.
    """
    if not isinstance(schedulers, list) or not all(isinstance(state, dict) for state in schedulers):
        return f"its lr_schedulers state is {brief_repr(schedulers)}, not one state per scheduler"
    pending: list[Any] = list(schedulers)
    while pending:
        item = pending.pop()
        if isinstance(item, list | tuple):
            pending.extend(item)
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            if not isinstance(key, str) or key == "optimizer" or key.startswith("__"):
                return f"its lr_schedulers state sets {brief_repr(key, 60)}, not a scheduler setting"
            numbers = value if key in SCHEDULER_NUMBERS and isinstance(value, list) else [value]
            if key in SCHEDULER_NUMBERS and not all(map(_finite_number, numbers)):
                return f"its lr_schedulers state has {key} {brief_repr(value, 60)}, not a number"
            pending.append(value)
    return None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite_number(value: Any) -> bool:
    return _number(value) and math.isfinite(value)


def allowed_import_paths() -> list[str]:
    """:data:`ALLOWED_IMPORTS`, ``$AUDIOSEP_IMPORT_ALLOWLIST`` and the defining path of each allowed class.

    jsonargparse also checks where an object is defined (``...callbacks.model_checkpoint.ModelCheckpoint``
    for ``...callbacks.ModelCheckpoint``), so both paths must be allowed.
    """
    from audiosep.models.registry import MODEL_CLASSES

    extra = [entry.strip() for entry in os.environ.get(EXTRA_IMPORTS_ENV, "").split(",") if entry.strip()]
    paths = [*ALLOWED_IMPORTS, *MODEL_CLASSES, *extra]
    for path in list(paths):
        obj = _importable_class(path)
        if obj is not None:
            paths.append(f"{obj.__module__}.{obj.__qualname__}")
    return paths


def _importable_class(path: str) -> type | None:
    """The class ``path`` names, if it names one (a module path or a missing name gives None)."""
    module_name, _, name = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), name, None) if module_name else None
    except ImportError:
        return None
    return obj if inspect.isclass(obj) else None


def restrict_imports() -> None:
    """Make jsonargparse refuse, before importing it, any class or function not in :func:`allowed_import_paths`."""
    from jsonargparse import set_parsing_settings

    try:
        set_parsing_settings(import_path_denylist=["*"], import_path_allowlist=allowed_import_paths())
    except ValueError as err:  # a malformed $AUDIOSEP_IMPORT_ALLOWLIST entry
        raise UserError(f"${EXTRA_IMPORTS_ENV}: {err}") from err


def yaml_without_aliases(text: str) -> Any:
    """jsonargparse's YAML loading, after a parse-only pass that refuses ``*alias`` (not expanded: linear cost),
    nesting deeper than :data:`MAX_YAML_DEPTH` and ints longer than :data:`MAX_YAML_INT_CHARS` characters.

    Why: a recipe of a few hundred bytes with nested aliases ("billion laughs") stands for a value
    of exponential size that the parser's checks expand (minutes and GBs); recipes never need them.
    A list nested 2000 levels deep ended jsonargparse in a RecursionError traceback.
    """
    import yaml
    from jsonargparse._loaders_dumpers import yaml_load

    depth = 0
    keys = MappingKeys()
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        keys.see(event)
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not supported", event.start_mark)
        if isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_YAML_INT_CHARS and _plain_int(event):
            raise yaml.composer.ComposerError(None, None, f"an integer of more than {MAX_YAML_INT_CHARS} characters",
                                              event.start_mark)  # fmt: skip
        depth += isinstance(event, yaml.CollectionStartEvent) - isinstance(event, yaml.CollectionEndEvent)
        if depth > MAX_YAML_DEPTH:  # jsonargparse recurses per level: a traceback further down
            raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_YAML_DEPTH} levels deep",
                                              event.start_mark)  # fmt: skip
    return yaml_load(text)


MAX_YAML_DEPTH = 64  # recipes nest 4-6 levels


def _plain_int(event: Any) -> bool:
    """Whether a YAML scalar event is an unquoted int by PyYAML's own resolver (decimal, octal, hex, base 60).

    Why: past 4300 digits Python refuses to convert one (a traceback), and base-60 ones parse in quadratic time.
    """
    import yaml

    if not event.implicit[0]:  # quoted or tagged: a string
        return False
    resolvers = yaml.SafeLoader.yaml_implicit_resolvers.get(event.value[:1], [])
    return any(tag == "tag:yaml.org,2002:int" and regexp.match(event.value) for tag, regexp in resolvers)


def refuse_yaml_aliases() -> None:
    """Make jsonargparse load every YAML config and value through :func:`yaml_without_aliases`."""
    import yaml
    from jsonargparse import set_loader

    set_loader("yaml", yaml_without_aliases, exceptions=(yaml.YAMLError,))


def run_lightning_cli(argv: list[str], run: bool = True) -> LightningCLI:
    """Run ``fit``/``validate``/``test`` with ``argv`` (starting with the sub-command).

    With ``run=False``, ``argv`` holds no sub-command and the CLI only builds the trainer, model
    and data module (for programmatic use such as ``audiosep demo``).
    """
    # Expected, not actionable for our users: `audiosep` passes its own argv on purpose; recipes'
    # optimizers replace the task's default; CSV logging without TensorBoard is our default.
    for message in (
        "LightningCLI's args parameter is intended",
        ".*configure_optimizers` will be overridden",
        ".*tensorboardX` has been removed",
        ".*isinstance\\(treespec, LeafSpec\\)",
    ):
        warnings.filterwarnings("ignore", message=message)
    restrict_imports()
    refuse_yaml_aliases()
    owned_group = not distributed_initialized()  # a caller's own process group is the caller's to end
    try:
        cli = AudiosepCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=resolve_config_paths(argv),
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "audiosep"},
            parser_class=OneLineErrorParser,
            # Lightning's bars go to stdout: on a terminal by default, not into a redirected log (a recipe or
            # --trainer.enable_progress_bar still decides)
            trainer_defaults={"enable_progress_bar": sys.stdout.isatty()},
            run=run,
        )
    except MisconfigurationException as err:  # Lightning's verdict on trainer settings (accelerator, devices, ...)
        raise UserError(f"trainer settings: {one_line(str(err))}") from None
    if run and owned_group:
        release_process_group()
    return cli


def distributed_initialized() -> bool:
    """Whether this process is in a torch.distributed process group."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def release_process_group() -> None:
    """Destroy the DDP process group once a run that made it has finished on this rank.

    Lightning leaves it to the interpreter's exit, where gloo's worker threads can abort the process
    (SIGABRT, "terminate called without an active exception") after a run that succeeded. Only after a
    success: a rank that failed would wait in the collective teardown for ranks that still train.
    """
    if distributed_initialized():
        torch.distributed.destroy_process_group()
