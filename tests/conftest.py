"""Shared fixtures: one thread per process (a 2-core CI machine runs ~20x faster), tiny models, real data."""

from __future__ import annotations

import hashlib
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
# DeepSpeed JIT-builds its CPU comm op into torch's extension cache; the build command names the venv's
# include paths, so two venvs sharing one cache rebuild it (~70 s) every time they alternate. One cache
# per venv, named by its folder and a hash of its full path (two checkouts' `.venv-latest` differ;
# inherited by the launched processes).
_VENV = os.path.realpath(sys.prefix)
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(
    os.path.expanduser("~"), ".cache", "torch_extensions",
    f"{os.path.basename(_VENV)}-{hashlib.sha256(_VENV.encode()).hexdigest()[:8]}"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

DATA_ENV = "DISTILLKIT_SCD_DATA"


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    """(teacher_dir, student_dir): tiny Llama models saved once per test session."""
    from distillkit_scd.models.loading import make_tiny_pair

    return make_tiny_pair(tmp_path_factory.mktemp("tiny_models"), seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_pair):
    """The tokenizer the tiny pair shares, loaded the way the library loads any tokenizer."""
    from distillkit_scd.models.loading import load_tokenizer

    return load_tokenizer(str(tiny_pair[1]))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The benchmark data: `$DISTILLKIT_SCD_DATA`, else `<checkout>/data` (`distillkit-scd data fetch all --to
    data/`), else a read-only copy beside the checkout, `<checkout>/../shared/data` (the CI machines')."""
    checkout = Path(__file__).resolve().parents[1]
    root = Path(os.environ.get(DATA_ENV) or next((p for p in (checkout / "data", checkout.parent / "shared" / "data")
                                                  if p.is_dir()), checkout / "data"))
    if not (root / "pubmedqa").is_dir() or not (root / "jmed_llm").is_dir():
        pytest.skip(f"benchmark data not found at {root} (expected pubmedqa/ and jmed_llm/); "
                    f"set ${DATA_ENV} to run the real-data tests")
    return root
