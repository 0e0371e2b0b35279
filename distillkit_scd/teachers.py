"""The teacher's checkpoint pool, and in-place swaps of the live teacher's weights.

A swap copies a checkpoint's safetensors into the parameters of the one teacher module that already
exists (`torch.no_grad()` + `param.copy_()`: same storage, same module), so DDP replicas, DeepSpeed
engines, hooks and compiled graphs stay valid and no second model is ever allocated.

- Tied weights (e.g. `lm_head.weight` is `model.embed_tokens.weight`) are one Parameter under several
  names: it is written once, from whichever of its names the checkpoint stores, and stays tied. A
  checkpoint that stores two *different* tensors for a tied pair is refused (the model cannot hold both).
- A swap is all-or-nothing: every tensor's name, shape and finiteness is checked before the first copy,
  so a bad checkpoint (missing/extra/mis-shaped tensor, NaN/inf) raises `ValueError` naming the file and
  tensor and leaves the live teacher untouched. The check reads the checkpoint once (tensor by tensor,
  bounded memory) and is remembered per (file, size, mtime), so swapping back to a checkpoint is a single
  read.
- ZeRO-3 (parameters carry `ds_id`): parameters are gathered in groups with
  `deepspeed.zero.GatheredParameters(group, modifier_rank=0)`; rank 0 copies and DeepSpeed broadcasts and
  re-partitions on exit. With `modifier_rank=None` the gathered copies are read-only views and the new
  values are silently DISCARDED on exit — never use it here. Every rank runs the validation, so a bad
  checkpoint raises on all ranks instead of leaving the others waiting in a collective.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from distillkit_scd.atomic import atomic_write_json

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
INDEX_FILE = "model.safetensors.index.json"
_GATHER_BYTES = 256 << 20  # ZeRO-3: gather at most ~256 MiB of parameters at a time


@dataclass
class CheckpointEntry:
    """One teacher SFT checkpoint in `manifest.json`; `index` is 0-based and equals its position."""

    index: int
    step: int
    epoch: float
    path: str
    val_loss: float | None = None
    val_score: float | None = None


def write_manifest(folder: str | Path, entries: list[CheckpointEntry], best_index: int, selected_by: str) -> Path:
    """Write `folder/manifest.json` atomically (temporary file, then rename); returns its path."""
    folder = Path(folder)
    if not 0 <= best_index < len(entries):
        raise ValueError(f"best_index: {best_index} outside the {len(entries)} checkpoints")
    data = {"checkpoints": [asdict(e) for e in entries], "best_index": best_index, "selected_by": selected_by}
    return atomic_write_json(folder / MANIFEST, data)


def read_manifest(path: str | Path) -> tuple[list[CheckpointEntry], int, str]:
    """(entries, best_index, selected_by) of a manifest file, or of `folder/manifest.json`.

    Raises:
        ValueError: missing or malformed manifest (the file named), indices not 0..N−1 in order, or
            best_index out of range.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    try:
        data = json.loads(path.read_text())
        entries = [CheckpointEntry(**e) for e in data["checkpoints"]]
        best = int(data["best_index"])
    except FileNotFoundError:
        raise ValueError(f"{path}: checkpoint manifest not found; run the SFT stage first") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a valid checkpoint manifest ({err})") from None
    if not entries:
        raise ValueError(f"{path}: checkpoints: expected at least one checkpoint, got none")
    for j, e in enumerate(entries):
        if e.index != j:
            raise ValueError(f"{path}: checkpoints[{j}].index: expected {j} (0-based, in order), got {e.index}")
    if not 0 <= best < len(entries):
        raise ValueError(f"{path}: best_index: expected 0..{len(entries) - 1}, got {best}")
    return entries, best, data.get("selected_by", "")


# --------------------------------------------------------------------------------------------------
# Reading checkpoints: which file holds each tensor, and a one-time validation per checkpoint.
# --------------------------------------------------------------------------------------------------


def checkpoint_files(folder: str | Path) -> dict[str, Path]:
    """Map tensor name → safetensors file of a checkpoint folder (sharded via its index, or not).

    Raises:
        ValueError: no safetensors, a shard named by the index missing, or a tensor in two files.
    """
    from safetensors import safe_open

    folder = Path(folder)
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise ValueError(f"{index}: not a valid safetensors index ({err})") from None
        for file in set(weight_map.values()):
            if not isinstance(file, str) or Path(file).name != file or file in (".", ".."):
                raise ValueError(f"{index}: shard {file!r} is not a file name inside {folder} "
                                 "(shards must sit beside the index)")
        out = {name: folder / file for name, file in weight_map.items()}
        for file in set(out.values()):
            if not file.is_file():
                raise ValueError(f"{index}: names shard {file.name}, which is missing from {folder}")
        return out
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder}: no .safetensors weights (checkpoints are loaded from safetensors only)")
    out: dict[str, Path] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as fh:
                names = list(fh.keys())
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{file}: cannot read safetensors ({err})") from None
        for name in names:
            if name in out:
                raise ValueError(f"{folder}: tensor {name!r} is stored in both {out[name].name} and {file.name}")
            out[name] = file
    return out


def _iter_tensors(files: dict[str, Path], names):
    """Yield (name, file, tensor) for `names`, opening each file once, one tensor in memory at a time."""
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(files[name], []).append(name)
    for file, file_names in by_file.items():
        try:
            with safe_open(str(file), framework="pt") as fh:
                for name in file_names:
                    yield name, file, fh.get_tensor(name)
        except Exception as err:  # safetensors raises its own SafetensorError for corrupt files
            raise ValueError(f"{file}: cannot read safetensors ({err})") from None


def _plain(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside DDP / DeepSpeed wrappers (their parameter names carry `module.`)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def _is_zero3(param: torch.nn.Parameter) -> bool:
    return hasattr(param, "ds_id")


def _shape(param: torch.Tensor) -> tuple[int, ...]:
    # Under ZeRO-3 a parameter's local tensor is an empty shard; its full shape is `ds_shape`.
    return tuple(param.ds_shape) if _is_zero3(param) else tuple(param.shape)


@dataclass
class _Plan:
    """What a swap will copy: (target tensor, checkpoint name) pairs, validated."""

    files: dict[str, Path]
    params: list[tuple[torch.nn.Parameter, str]]
    buffers: list[tuple[torch.Tensor, str]]


_VALIDATED: set[tuple] = set()  # checkpoints whose every tensor was found finite, keyed by file stats


def _stats_key(files: dict[str, Path]) -> tuple:
    out = []
    for file in sorted(set(files.values())):
        st = file.stat()
        out.append((str(file.resolve()), st.st_size, st.st_mtime_ns))
    return tuple(out)


def plan_swap(model: torch.nn.Module, folder: str | Path) -> _Plan:
    """Match a checkpoint's tensors to `model`'s parameters and buffers, and validate them all.

    Raises:
        ValueError: naming the folder/file and tensor for a missing, unexpected or mis-shaped tensor, a
            tied pair stored with different values, or NaN/inf values.
    """
    folder = Path(folder)
    files = checkpoint_files(folder)
    model = _plain(model)
    aliases: dict[int, list[str]] = {}  # one Parameter object → all its names (tied weights)
    objects: dict[int, torch.nn.Parameter] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
        objects[id(param)] = param
    params: list[tuple[torch.nn.Parameter, str]] = []
    tied_pairs: list[tuple[str, str]] = []
    for key, names in aliases.items():
        stored = [n for n in names if n in files]
        if not stored:
            raise ValueError(f"{folder}: checkpoint has no tensor {names[0]!r}"
                             + (f" (nor its tied aliases {names[1:]})" if len(names) > 1 else "")
                             + f"; is it a checkpoint of this model? ({len(files)} tensors found)")
        params.append((objects[key], stored[0]))
        tied_pairs += [(stored[0], other) for other in stored[1:]]
    persistent = {n for n, _ in model.named_buffers()} - _non_persistent_buffers(model)
    buffers = [(buf, name) for name, buf in model.named_buffers() if name in persistent and name in files]
    known = {n for names in aliases.values() for n in names} | {n for _, n in buffers}
    unexpected = sorted(set(files) - known)
    if unexpected:
        name = unexpected[0]
        raise ValueError(f"{files[name]}: tensor {name!r} does not belong to the model "
                         f"({len(unexpected)} unexpected tensors); is it a checkpoint of this model?")
    shapes = {name: _shape(t) for t, name in params + buffers}
    shapes.update({other: shapes[first] for first, other in tied_pairs})
    key = _stats_key(files)
    validated = key in _VALIDATED
    names = [n for _, n in params + buffers] + [other for _, other in tied_pairs]
    stored_first = dict(tied_pairs)
    first_values: dict[str, torch.Tensor] = {}
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(files[name], []).append(name)
    for file, file_names in by_file.items():  # shapes from headers only: cheap, catches wrong checkpoints early
        with safe_open(str(file), framework="pt") as fh:
            for name in file_names:
                got = tuple(fh.get_slice(name).get_shape())
                if got != shapes[name]:
                    raise ValueError(f"{file}: tensor {name!r} has shape {got}, the model expects {shapes[name]}")
    if not validated or tied_pairs:
        for name, file, tensor in _iter_tensors(files, names):
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise ValueError(f"{file}: tensor {name!r} has {bad} NaN/inf values; refusing this checkpoint")
            if name in stored_first:
                first_values[name] = tensor
        for first, other in tied_pairs:
            _, _, value = next(_iter_tensors(files, [other]))
            if not torch.equal(first_values[first], value):
                raise ValueError(f"{folder}: the model ties {first!r} and {other!r}, but the checkpoint stores "
                                 "different values for them")
        _VALIDATED.add(key)
    return _Plan(files, params, buffers)


def _non_persistent_buffers(model: torch.nn.Module) -> set[str]:
    out = set()
    for prefix, module in model.named_modules():
        for name in getattr(module, "_non_persistent_buffers_set", ()):
            out.add(f"{prefix}.{name}" if prefix else name)
    return out


@torch.no_grad()
def load_weights_in_place(model: torch.nn.Module, folder: str | Path) -> None:
    """Copy a checkpoint's weights into `model`'s existing parameters and buffers (ZeRO-3 aware).

    Raises:
        ValueError: see `plan_swap`; the model is unchanged when it raises.
    """
    plan = plan_swap(model, folder)
    by_name = {name: t for t, name in plan.params + plan.buffers}
    if any(_is_zero3(p) for p, _ in plan.params):
        _copy_zero3(plan, by_name)
        return
    for name, _file, tensor in _iter_tensors(plan.files, list(by_name)):
        target = by_name[name]
        target.copy_(tensor.to(device=target.device, dtype=target.dtype))


def _copy_zero3(plan: _Plan, by_name: dict[str, torch.Tensor]) -> None:
    """ZeRO-3: gather a group of parameters, copy on rank 0, let DeepSpeed re-partition (modifier_rank=0)."""
    import deepspeed
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    groups: list[list[tuple[torch.nn.Parameter, str]]] = [[]]
    size = 0
    for param, name in plan.params:
        nbytes = math.prod(_shape(param)) * param.element_size()
        if groups[-1] and size + nbytes > _GATHER_BYTES:
            groups.append([])
            size = 0
        groups[-1].append((param, name))
        size += nbytes
    for group in groups:
        params = [p for p, _ in group]
        # modifier_rank=0: rank 0's values are broadcast on exit. None would discard them silently.
        with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
            if rank == 0:
                for name, _, tensor in _iter_tensors(plan.files, [n for _, n in group]):
                    target = by_name[name]
                    target.data.copy_(tensor.to(device=target.device, dtype=target.dtype))
    for buf, name in plan.buffers:  # buffers are not partitioned: every rank copies
        _, _, tensor = next(_iter_tensors(plan.files, [name]))
        buf.copy_(tensor.to(device=buf.device, dtype=buf.dtype))


class CheckpointPool:
    """The teacher's N SFT checkpoints (from its manifest) and which one the live teacher holds.

    `active_index` is the checkpoint last loaded by `load_into` (None until then; set it yourself when the
    teacher module was created from one of the checkpoints). Relative checkpoint paths in the manifest are
    taken relative to the manifest's folder, else to the current directory.
    """

    def __init__(self, manifest_path: str | Path):
        self.manifest_path = Path(manifest_path)
        if self.manifest_path.is_dir():
            self.manifest_path = self.manifest_path / MANIFEST
        self.entries, self.best_index, self.selected_by = read_manifest(self.manifest_path)
        self._paths = [self._resolve(e) for e in self.entries]
        self.active_index: int | None = None

    def _resolve(self, entry: CheckpointEntry) -> Path:
        """A checkpoint folder: absolute as written, or relative to the manifest's folder (or, as the SFT
        stage writes it for a relative `output_dir`, to the working directory). A relative path must stay
        inside the manifest's folder: a manifest cannot send us to read `../../elsewhere`."""
        path = Path(entry.path)
        candidates = [path] if path.is_absolute() else [self.manifest_path.parent / path, path]
        home = self.manifest_path.parent.resolve()
        for candidate in candidates:
            if candidate.is_dir():
                if not path.is_absolute() and not candidate.resolve().is_relative_to(home):
                    raise ValueError(f"{self.manifest_path}: checkpoints[{entry.index}].path: {entry.path!r} "
                                     f"leads outside {home}; a relative checkpoint path must stay inside the "
                                     "manifest's folder (write an absolute path to use a folder elsewhere)")
                return candidate
        raise ValueError(f"{self.manifest_path}: checkpoints[{entry.index}].path: folder {entry.path!r} not found "
                         f"(looked at {', '.join(str(c) for c in candidates)})")

    @property
    def num_checkpoints(self) -> int:
        return len(self.entries)

    def path(self, index: int) -> Path:
        """Folder of checkpoint `index` (0-based)."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.entries):
            raise ValueError(f"checkpoint index: expected 0..{len(self.entries) - 1}, got {index!r}")
        return self._paths[index]

    def load_into(self, model: torch.nn.Module, index: int) -> None:
        """Make checkpoint `index` the live teacher, in place; a no-op if it already is.

        Raises:
            ValueError: bad index or checkpoint (see `plan_swap`); `active_index` and the model are then
                unchanged.
        """
        folder = self.path(index)
        if index == self.active_index:
            return
        logger.info("teacher: loading checkpoint %d (%s) in place", index, folder)
        load_weights_in_place(model, folder)
        self.active_index = index
