"""The teacher's checkpoint pool, and in-place swaps of the active checkpoint.

A swap copies a checkpoint's safetensors into the parameters of the one teacher module that already
exists (optimizer-free, wrapper-free, same storage), so DDP replicas, DeepSpeed engines and hooks stay
valid and no second model is ever allocated. Tied weights stay tied because each storage is written once.
Under ZeRO-3 each parameter is gathered with `GatheredParameters(..., modifier_rank=0)`: rank 0 writes
and DeepSpeed re-partitions its values on exit. (With `modifier_rank=None` the writes are discarded
silently.)
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass
class CheckpointEntry:
    index: int
    step: int
    epoch: float
    path: str
    val_loss: float | None = None
    val_score: float | None = None


def write_manifest(folder: Path, entries: list[CheckpointEntry], best_index: int, selected_by: str) -> Path:
    """Write `manifest.json` atomically (temporary file, then rename)."""
    path = Path(folder) / MANIFEST
    data = {"checkpoints": [e.__dict__ for e in entries], "best_index": best_index, "selected_by": selected_by}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
    return path


def read_manifest(path: str | Path) -> tuple[list[CheckpointEntry], int, str]:
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    try:
        data = json.loads(path.read_text())
        entries = [CheckpointEntry(**e) for e in data["checkpoints"]]
        best = int(data["best_index"])
    except FileNotFoundError:
        raise ValueError(f"{path}: teacher manifest not found; run the teacher SFT stage first") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a valid checkpoint manifest ({err})") from None
    if not entries or not 0 <= best < len(entries):
        raise ValueError(f"{path}: best_index {best} outside the {len(entries)} checkpoints")
    return entries, best, data.get("selected_by", "")


def _safetensors_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder}: no .safetensors weights (checkpoints are loaded from safetensors only)")
    return files


def _read_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in _safetensors_files(folder):
        try:
            part = load_file(str(file))
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{file}: cannot read safetensors ({err})") from None
        for name, tensor in part.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{file}: tensor {name} has NaN or inf values; refusing this checkpoint")
            state[name] = tensor
    return state


def load_weights_in_place(model: torch.nn.Module, folder: str | Path) -> None:
    """Copy a checkpoint's weights into `model`'s existing parameters (ZeRO-3 aware).

    Raises:
        ValueError: a missing or mis-shaped tensor, naming the checkpoint folder and the tensor.
    """
    folder = Path(folder)
    state = _read_state(folder)
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers())
    seen: set[int] = set()
    zero3 = any(hasattr(p, "ds_id") for p in params.values())
    for name, param in params.items():
        key = id(param)
        if key in seen:  # tied weight: already written through its first name
            continue
        seen.add(key)
        source = state.get(name)
        if source is None and name == "lm_head.weight" and "model.embed_tokens.weight" in state:
            source = state["model.embed_tokens.weight"]  # checkpoints of tied models store one copy
        if source is None:
            raise ValueError(f"{folder}: checkpoint has no tensor {name!r}")
        shape = tuple(param.ds_shape) if zero3 else tuple(param.shape)
        if tuple(source.shape) != shape:
            raise ValueError(f"{folder}: tensor {name!r} has shape {tuple(source.shape)}, the model expects {shape}")
        if zero3:
            import deepspeed

            with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                if torch.distributed.get_rank() == 0:
                    with torch.no_grad():
                        param.copy_(source.to(param.dtype))
        else:
            with torch.no_grad():
                param.copy_(source.to(device=param.device, dtype=param.dtype))
    for name, buf in buffers.items():
        if name in state:
            with torch.no_grad():
                buf.copy_(state[name].to(device=buf.device, dtype=buf.dtype))


class CheckpointPool:
    """The teacher's N SFT checkpoints (from its manifest) and which one is loaded in the live teacher."""

    def __init__(self, manifest_path: str | Path):
        self.manifest_path = Path(manifest_path)
        self.entries, self.best_index, self.selected_by = read_manifest(self.manifest_path)
        self.active_index: int | None = None

    @property
    def num_checkpoints(self) -> int:
        return len(self.entries)

    def path(self, index: int) -> Path:
        if not 0 <= index < len(self.entries):
            raise ValueError(f"checkpoint index {index} outside 0..{len(self.entries) - 1}")
        return Path(self.entries[index].path)

    def load_into(self, model: torch.nn.Module, index: int) -> None:
        """Make checkpoint `index` the live teacher, in place; a no-op if it already is."""
        if index == self.active_index:
            return
        logger.info("teacher: loading checkpoint %d (%s) in place", index, self.path(index))
        load_weights_in_place(model, self.path(index))
        self.active_index = index
