"""Content hashes for cache keys: model folders (weights + config) and tokenised data.

File hashes are FULL sha256 digests, streamed: a hash of size + header + sampled blocks would miss a
changed tensor in an unsampled block and silently reuse a stale cache. Digests are memoised per
(resolved path, size, mtime_ns) — in-process, and on disk in a small JSON (`$DISTILLKIT_SCD_HASH_CACHE`,
default `~/.cache/distillkit_scd/file_hashes.json`) so the pipeline's separate stage processes do not
re-read multi-GB checkpoints. A file rewritten in place gets a new mtime and is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

HASH_CACHE_ENV = "DISTILLKIT_SCD_HASH_CACHE"
_BLOCK = 1 << 22  # 4 MiB reads
_memo: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()

MODEL_FILE_SUFFIXES = (".safetensors",)
MODEL_FILE_NAMES = ("config.json", "model.safetensors.index.json")
"""What defines a model's outputs: weights and architecture config (not tokenizer, trainer or RNG state)."""


def _disk_cache_path() -> Path:
    env = os.environ.get(HASH_CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "distillkit_scd" / "file_hashes.json"


def _read_disk_cache() -> dict:
    try:
        return json.loads(_disk_cache_path().read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_disk_cache(key: tuple[str, int, int], digest: str) -> None:
    """Best effort (read-only home, concurrent writers): a lost entry only costs a re-hash."""
    path = _disk_cache_path()
    try:
        data = _read_disk_cache()
        data[key[0]] = [key[1], key[2], digest]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError as err:
        logger.debug("hash cache %s not written (%s)", path, err)


def sha256_file(path: str | Path) -> str:
    """Full streamed sha256 of a file, uncached."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def file_hash(path: str | Path) -> str:
    """sha256 of a file's content, memoised per (resolved path, size, mtime_ns).

    Raises:
        ValueError: the file does not exist.
    """
    path = Path(path)
    try:
        resolved = str(path.resolve())
        st = os.stat(resolved)
    except OSError as err:
        raise ValueError(f"{path}: cannot hash ({err})") from None
    key = (resolved, st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _memo:
            return _memo[key]
    entry = _read_disk_cache().get(resolved)
    if entry is not None and entry[0] == key[1] and entry[1] == key[2]:
        digest = entry[2]
    else:
        digest = sha256_file(resolved)
        _write_disk_cache(key, digest)
    with _lock:
        _memo[key] = digest
    return digest


def model_files(folder: str | Path) -> list[Path]:
    """The files of a model folder that determine its outputs: *.safetensors, config.json, the index."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: model folder not found")
    files = sorted(p for p in folder.iterdir() if p.is_file()
                   and (p.suffix in MODEL_FILE_SUFFIXES or p.name in MODEL_FILE_NAMES))
    if not any(p.suffix == ".safetensors" for p in files):
        raise ValueError(f"{folder}: no .safetensors weights to hash")
    return files


def folder_hash(folder: str | Path) -> str:
    """Hash of a model folder's weights and config (file names + contents), independent of its location."""
    digest = hashlib.sha256()
    for p in model_files(folder):
        digest.update(p.name.encode() + b"\0" + file_hash(p).encode() + b"\n")
    return digest.hexdigest()


def data_hash(ids, input_ids, labels) -> str:
    """Hash of tokenised rows in order (ids, token ids and labels; lengths delimit rows unambiguously)."""
    digest = hashlib.sha256()
    n = 0
    for i, x, y in zip(ids, input_ids, labels, strict=True):
        x = np.asarray(x, dtype=np.int64)
        y = np.asarray(y, dtype=np.int64)
        sid = str(i).encode()
        digest.update(np.array([len(sid), x.size, y.size], dtype=np.int64).tobytes() + sid)
        digest.update(x.tobytes())
        digest.update(y.tobytes())
        n += 1
    digest.update(f"rows={n}".encode())
    return digest.hexdigest()


def dataset_hash(dataset) -> str:
    """`data_hash` of a tokenised split with columns id, input_ids, labels."""
    return data_hash(dataset["id"], dataset["input_ids"], dataset["labels"])


def combine(*parts: str) -> str:
    """One key from several hashes/strings (order matters)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()
