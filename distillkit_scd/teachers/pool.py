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

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from distillkit_scd.models.checkpoints import MANIFEST, checkpoint_files, read_manifest, resolve_checkpoint
from distillkit_scd.utils.distributed import unwrap

logger = logging.getLogger(__name__)

_GATHER_BYTES = 256 << 20  # ZeRO-3: gather at most ~256 MiB of parameters at a time


# --------------------------------------------------------------------------------------------------
# Reading checkpoints: which file holds each tensor, and a one-time validation per checkpoint.
# --------------------------------------------------------------------------------------------------


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


def _is_zero3(param: torch.nn.Parameter) -> bool:
    return hasattr(param, "ds_id")


def param_shape(param: torch.Tensor) -> tuple[int, ...]:
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
    model = unwrap(model)
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
    shapes = {name: param_shape(t) for t, name in params + buffers}
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
        nbytes = math.prod(param_shape(param)) * param.element_size()
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

    `active_index` is the checkpoint the live teacher holds: set by `load_model` (which builds the teacher
    from a checkpoint) and by `load_into` (which swaps one in place); None until either ran. Checkpoint
    folders are resolved by `models.checkpoints.resolve_checkpoint` (a relative path stays inside the manifest's
    folder).
    """

    def __init__(self, manifest_path: str | Path):
        self.manifest_path = Path(manifest_path)
        if self.manifest_path.is_dir():
            self.manifest_path = self.manifest_path / MANIFEST
        self.entries, self.best_index, self.selected_by = read_manifest(self.manifest_path)
        self._paths = [resolve_checkpoint(self.manifest_path, e) for e in self.entries]
        self.active_index: int | None = None

    @property
    def num_checkpoints(self) -> int:
        return len(self.entries)

    def path(self, index: int) -> Path:
        """Folder of checkpoint `index` (0-based)."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.entries):
            raise ValueError(f"checkpoint index: expected 0..{len(self.entries) - 1}, got {index!r}")
        return self._paths[index]

    def load_model(self, index: int, dtype: str = "float32", trust_remote_code: bool = False,
                   attn_implementation: str | None = None) -> torch.nn.Module:
        """A new teacher module built from checkpoint `index` (`models.loading.load_model`), which then is the
        live teacher: later `load_into` calls swap other checkpoints into it in place."""
        from distillkit_scd.models.loading import load_model

        model = load_model(str(self.path(index)), dtype, trust_remote_code, attn_implementation)
        self.active_index = index
        return model

    def load_into(self, model: torch.nn.Module, index: int) -> None:
        """Make checkpoint `index` the live teacher, in place; a no-op if it already is.

        Raises:
            ValueError: bad index or checkpoint (see `plan_swap`); `active_index` and the model are then
                unchanged.
        """
        folder = self.path(index)
        if index == self.active_index:
            return
        logger.info("teacher: loading checkpoint %d (%s) in place", index + 1, folder)  # 1-based, as the paper
        load_weights_in_place(model, folder)
        self.active_index = index
