"""`distillkit-scd data fetch pubmedqa|jmed|all --to DIR`: the paper's data from its original public sources.

Files come from the upstream GitHub repositories at pinned commits (raw.githubusercontent.com), each
checked against its sha256 before it is written (atomically), into the layout the task loaders read:

```
DIR/pubmedqa/ori_pqal.json, test_ground_truth.json, LICENSE          (PubMedQA PQA-L; MIT)
DIR/jmed_llm/jmmlu_med.csv crade.csv rrtnm.csv smdis.csv nrner.csv   (JMED-LLM 100-item benchmark files)
DIR/jmed_llm/all/JMMLU-Med.csv CRADE.csv RRTNM.csv SMDIS.csv NRNER.csv (the full pools; the paper recipes')
DIR/<folder>/SOURCE.json                                              (URL, commit, sha256, licence per file)
```

Tasks read them from `DISTILLKIT_SCD_DATA=DIR` (unset: `data/`), or `task.source: DIR/pubmedqa` (`DIR/jmed_llm`). A file already present with the right
checksum is not downloaded again; a download whose checksum differs is refused and nothing is written
for it (the error names the URL and both checksums). The checksums are those of the copies the project
was developed on (git blob ids verified against upstream at these commits).
"""

from __future__ import annotations

import hashlib
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from distillkit_scd.utils.atomic import atomic_write_bytes, atomic_write_json
from distillkit_scd.utils.hashing import sha256_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One upstream repository at a pinned commit: `files` maps its path → (our path, sha256)."""

    repo: str
    commit: str
    folder: str
    license: str
    files: dict[str, tuple[str, str]]

    @property
    def base_url(self) -> str:
        return f"https://raw.githubusercontent.com/{self.repo}/{self.commit}/"


_JMED_FILES = {  # upstream path: (ours, sha256)
    "datasets/jmmlu_med.csv": ("jmmlu_med.csv", "b8ab3275a92ca2bc24bd63e7d0aa823564a3c8d8f9518e377511856574b92c60"),
    "datasets/crade.csv": ("crade.csv", "21e41f3f52ea5138339d3c034eed8c50d96abb8f7f08a867fd319c02a9aeac26"),
    "datasets/rrtnm.csv": ("rrtnm.csv", "4362ec23e2260abb9388402a9682e66261c417e475243e345b25b8f0903eabbb"),
    "datasets/smdis.csv": ("smdis.csv", "ee2fb38d87661a579c8483cda057e79999a806944a60d71533085c3d7f60b7fd"),
    "datasets/nrner.csv": ("nrner.csv", "1d3e22a77404cfec60d2a7caef626f475f2d385d26d4b2b22487331ca8a5d5f1"),
    "datasets/all/JMMLU-Med.csv": ("all/JMMLU-Med.csv",
                                   "6d2be1468275bf10aecb4bb2e6bebfbf4c47f0d3faaaf3984640b8f0032d8eb3"),
    "datasets/all/CRADE.csv": ("all/CRADE.csv", "238a954aaa5b84b08adfc4839f21d8ca2d0ab1ddbc54631846e326102f9aa4d2"),
    "datasets/all/RRTNM.csv": ("all/RRTNM.csv", "a0f476e98c510b5c0cc81a9cdcf352836208ab2a1aea6c77bcaf7fede5935436"),
    "datasets/all/SMDIS.csv": ("all/SMDIS.csv", "ed6c182076356fda221266b486967d5d3066cacca55a9083c8289aa02e64f034"),
    "datasets/all/NRNER.csv": ("all/NRNER.csv", "10fa51537e7333b3c47211409113da6645f2d0849c24af6153c7b00dadb963bb"),
}

SOURCES = {
    "pubmedqa": Source(
        "pubmedqa/pubmedqa", "1cbae8e92f72f20c8d3747cbb3bf5bc53554d997", "pubmedqa",
        "MIT (the repository's LICENSE, kept beside the data); the contexts are PubMed abstracts",
        {"data/ori_pqal.json": ("ori_pqal.json", "8b3276be8942ebbd77f3ddcda12c1749bf0e490045a736fd8438ee40cf37a41d"),
         "data/test_ground_truth.json": ("test_ground_truth.json",
                                         "939fe566f09017d13b1ca64d2ddfee0bc2374b366048152997669cccedc44d51"),
         "LICENSE": ("LICENSE", "8e75abc6136be91e5ae66dbb6dda07c8bc9dcc215ed3bc1ba3ae7fab7904777e")}),
    "jmed": Source(
        "sociocom/JMED-LLM", "3774a34e4a26a7b8a7851f421ecad91a04c2f59b", "jmed_llm",
        "per task, the original resource's: JMMLU-Med CC BY-SA 4.0; CRADE, RRTNM, SMDIS CC BY 4.0; "
        "NRNER CC BY-NC-SA 4.0 (non-commercial)",
        _JMED_FILES),
}
NAMES = (*SOURCES, "all")


def _download(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (https/file URLs we build)
            return response.read()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ValueError(f"data fetch: {url}: download failed ({reason}); check the network (or a proxy) and "
                         "re-run: files already fetched are kept") from None


def fetch_source(name: str, to: str | Path, base_url: str | None = None, timeout: float = 120.0) -> Path:
    """Fetch one source into `to/<folder>/`; returns that folder.

    Args:
        base_url: replaces the pinned raw.githubusercontent.com URL (tests serve a local copy by file://).
    Raises:
        ValueError: unknown name, a failed download, or a checksum mismatch (URL and both checksums named).
    """
    if name not in SOURCES:
        raise ValueError(f"data fetch: expected one of {', '.join(NAMES)}, got {name!r}")
    src = SOURCES[name]
    base = (base_url or src.base_url).rstrip("/") + "/"
    folder = Path(to).expanduser() / src.folder
    record = {"repository": f"https://github.com/{src.repo}", "commit": src.commit, "license": src.license,
              "files": {}}
    for upstream, (ours, sha) in src.files.items():
        target = folder / ours
        url = base + upstream
        if target.is_file() and sha256_file(target) == sha:
            logger.info("data fetch: %s present, checksum ok", target)
        else:
            data = _download(url, timeout)
            got = hashlib.sha256(data).hexdigest()
            if got != sha:
                raise ValueError(f"data fetch: {url}: sha256 {got} differs from the expected {sha} (a damaged or "
                                 f"changed download); {target} was not written")
            atomic_write_bytes(target, data)
            logger.info("data fetch: %s (%d bytes) ← %s", target, len(data), url)
        record["files"][ours] = {"url": src.base_url + upstream, "sha256": sha}
    atomic_write_json(folder / "SOURCE.json", record)
    return folder


def fetch(names: str | list[str], to: str | Path, base_urls: dict[str, str] | None = None) -> list[Path]:
    """`fetch("all", DIR)` or `fetch(["pubmedqa"], DIR)`: every named source; returns their folders."""
    names = [names] if isinstance(names, str) else list(names)
    bad = [n for n in names if n not in NAMES]
    if bad or not names:
        raise ValueError(f"data fetch: expected one or more of {', '.join(NAMES)}, got {bad or names!r}")
    chosen = list(SOURCES) if "all" in names else list(dict.fromkeys(names))
    return [fetch_source(n, to, (base_urls or {}).get(n)) for n in chosen]
