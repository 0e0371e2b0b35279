"""Checkpoint files on disk: manifests, the safetensors a folder holds, and resume guards.

Every stage that reads another stage's checkpoints goes through here, so the rules are in one place:

- `manifest.json` (written by `write_manifest`, read by `read_manifest`)
  lists a training run's saved checkpoints and its p(best); `resolve_checkpoint` turns an entry's path
  into a folder, and a relative path must stay inside the manifest's folder (a manifest cannot send us to
  read `../../elsewhere`); `best_checkpoint` is the selected one.
- `checkpoint_files` maps tensor names to safetensors files (sharded via an index whose shards must sit
  beside it).
- `last_checkpoint` / `check_resume_checkpoint`: which trainer checkpoint a re-run resumes from, and a
  refusal naming the file when it is damaged (instead of a deep library traceback).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from distillkit_scd.utils.atomic import atomic_write_json

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
INDEX_FILE = "model.safetensors.index.json"


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


def resolve_checkpoint(manifest_path: str | Path, entry: CheckpointEntry) -> Path:
    """The folder of a manifest entry: absolute as written, or relative to the manifest's folder (or, as a
    training stage writes it for a relative `output_dir`, to the working directory).

    Raises:
        ValueError: the folder is missing, or a relative path leads outside the manifest's folder (write an
            absolute path to use a folder elsewhere).
    """
    manifest_path = Path(manifest_path)
    if manifest_path.is_dir():
        manifest_path = manifest_path / MANIFEST
    path = Path(entry.path)
    candidates = [path] if path.is_absolute() else [manifest_path.parent / path, path]
    home = manifest_path.parent.resolve()
    for candidate in candidates:
        if candidate.is_dir():
            if not path.is_absolute() and not candidate.resolve().is_relative_to(home):
                raise ValueError(f"{manifest_path}: checkpoints[{entry.index}].path: {entry.path!r} "
                                 f"leads outside {home}; a relative checkpoint path must stay inside the "
                                 "manifest's folder (write an absolute path to use a folder elsewhere)")
            return candidate
    raise ValueError(f"{manifest_path}: checkpoints[{entry.index}].path: folder {entry.path!r} not found "
                     f"(looked at {', '.join(str(c) for c in candidates)})")


def best_checkpoint(folder: str | Path) -> Path:
    """The folder of a run's p(best): the checkpoint its manifest selected. Raises ValueError as
    `read_manifest` and `resolve_checkpoint`."""
    entries, best, _ = read_manifest(folder)
    return resolve_checkpoint(folder, entries[best])


# --------------------------------------------------------------------------------------------------
# What a checkpoint folder holds, and which one a re-run resumes from.
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


def last_checkpoint(folder: Path) -> str | None:
    """The newest `checkpoint-<step>` folder with a finished save (trainer_state.json written last)."""
    done = [p for p in Path(folder).glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    if not done:
        return None
    return str(max(done, key=lambda p: int(p.name.split("-")[1])))


def check_resume_checkpoint(folder: str | Path) -> None:
    """Fail before training, naming the file, if the checkpoint a run would resume from is unreadable
    (truncated or garbage weights, optimizer or scheduler state) — instead of a deep library traceback.

    Raises:
        ValueError: naming the bad file and how to resume from the checkpoint before it.
    """
    import zipfile

    folder = Path(folder)
    fix = f"delete {folder} to resume from the checkpoint before it (or from scratch), then re-run"
    # DeepSpeed checkpoints may keep the weights only in their global_step*/ folder.
    if any(folder.glob("*.safetensors")) or (folder / INDEX_FILE).is_file() or not any(folder.glob("global_step*")):
        try:
            checkpoint_files(folder)
        except ValueError as err:
            raise ValueError(f"resume: {err}; {fix}") from None
    for name in ("optimizer.pt", "scheduler.pt"):  # torch.save writes zip archives
        file = folder / name
        if file.is_file() and not zipfile.is_zipfile(file):
            raise ValueError(f"resume: {file}: not a readable torch state file (truncated or corrupt); {fix}")
