"""Atomic artifact writes: a crash or a full disk never leaves a torn file, and never loses the old one.

Every artifact (manifests, results JSONs, stage stamps, reports, `distill_state.json`) is written the
same way: to a temporary file in the target's own folder (same filesystem, so the rename is atomic),
flushed and fsync'ed, then `os.replace`d over the target; the folder is fsync'ed after the rename so
the new name survives a power cut. A reader therefore sees the old file or the new one, whole. If
anything fails before the rename — an exception in the writer, a full disk, a kill — the temporary
file is removed (a SIGKILL cannot run cleanup: it leaves a hidden `.NAME.PID.tmp` beside the target,
which no reader looks at) and the previous artifact is untouched.

JSON artifacts are strict JSON (`atomic_write_json`): NaN/inf are written as null and recorded.

A full disk (ENOSPC, or EDQUOT: over quota) raises `DiskFullError`, an `OSError` whose message names the
file being written; other write errors name it too.
"""

from __future__ import annotations

import errno
import json
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class DiskFullError(OSError):
    """No space left (or quota exceeded) while writing an artifact; the message names the file."""


def temp_path(path: Path, suffix: str = "") -> Path:
    """A hidden temporary name beside `path`, unique per process and thread: `.NAME.PID.TID.tmp[suffix]`."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp{suffix}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms/filesystems that cannot open a folder: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _named_error(err: OSError, path: Path) -> OSError:
    """The same failure, with a message that names the artifact (a write on an fd names no file)."""
    if err.errno in _DISK_FULL:
        return DiskFullError(err.errno, f"{path}: disk full while writing it ({os.strerror(err.errno)}); "
                                        f"the previous version, if any, is unchanged — free space on the "
                                        f"filesystem of {path.parent} and re-run the same command")
    return OSError(err.errno, f"{path}: cannot write it ({err.strerror or err})")


def atomic_write(path: str | Path, write: Callable[[Path], Any], suffix: str = "") -> Path:
    """Write `path` atomically with `write(tmp_path)`, a function that creates the file at `tmp_path`
    (e.g. `fig.savefig`, `safetensors.torch.save_file`); `suffix` is appended to the temporary name
    (some writers pick the format from it, e.g. ".png"). Creates the parent folder.

    Returns: `path`.
    Raises:
        DiskFullError: ENOSPC/EDQUOT, naming `path`.  OSError: any other write error, naming `path`.
        Whatever `write` raises otherwise. In every case the temporary file is removed and the previous
        file at `path` is unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, suffix)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:  # the writer may not have synced: flush the data before the rename
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        if isinstance(err, OSError) and not isinstance(err, DiskFullError):
            raise _named_error(err, path) from err
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (see `atomic_write`)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()

    return atomic_write(path, write)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (see `atomic_write`)."""
    return atomic_write_bytes(path, text.encode(encoding))


def strict_json_data(data: Any) -> tuple[Any, dict[str, str]]:
    """`data` with every NaN/±inf float replaced by None (JSON null), and what was replaced: a map from
    the value's dotted path (`metrics.kappa`, `stages.0.loss`) to its repr (`nan`, `inf`, `-inf`).

    Python's `json` writes NaN and Infinity, which are not JSON: strict parsers (JavaScript, jq, Go, Rust)
    reject the whole file. Values inside numpy/torch scalars are not seen here; callers pass floats.
    """
    replaced: dict[str, str] = {}

    def clean(value: Any, where: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            replaced[where or "<top level>"] = repr(value)
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{where}.{i}" if where else str(i)) for i, v in enumerate(value)]
        return value

    return clean(data, ""), replaced


def atomic_write_json(path: str | Path, data: Any, *, indent: int | None = 2, ensure_ascii: bool = True,
                      default: Callable[[Any], Any] | None = None, trailing_newline: bool = False) -> Path:
    """Serialise `data` as strict JSON (before touching the disk, so a serialisation error writes nothing)
    and write it to `path` atomically (see `atomic_write`).

    NaN and ±inf become null; when `data` is a mapping, its key `nonfinite` then records which values
    they were (`{"metrics.kappa": "nan"}`), so a null never hides what happened.
    """
    data, replaced = strict_json_data(data)
    if replaced and isinstance(data, dict):
        data = {**data, "nonfinite": {**data.get("nonfinite", {}), **replaced}}
    text = json.dumps(data, indent=indent, ensure_ascii=ensure_ascii, default=default, allow_nan=False)
    return atomic_write_text(path, text + ("\n" if trailing_newline else ""))
