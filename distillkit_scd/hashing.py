"""Content hashes for cache keys: model folders (weights + config) and tokenised data.

File hashes are full sha256 digests (a sampled hash could miss a changed tensor), memoised per
(path, size, mtime) in-process so repeated checks are free.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

_HASHED_SUFFIXES = (".safetensors", ".json")


@lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hash(path: str | Path) -> str:
    st = Path(path).stat()
    return _file_sha256(str(path), st.st_size, st.st_mtime_ns)


def folder_hash(folder: str | Path) -> str:
    """Hash of a model folder's weights and configs (names and contents), independent of its location."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _HASHED_SUFFIXES
                   and p.name not in ("trainer_state.json", "distill_state.json"))
    if not files:
        raise ValueError(f"{folder}: no model files to hash")
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode())
        digest.update(file_hash(p).encode())
    return digest.hexdigest()


def data_hash(ids, input_ids, labels) -> str:
    """Hash of tokenised rows (order matters: AW rows are looked up by position and id)."""
    digest = hashlib.sha256()
    for i, x, y in zip(ids, input_ids, labels):
        digest.update(json.dumps([i, list(x), list(y)]).encode())
    return digest.hexdigest()


def combine(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()
