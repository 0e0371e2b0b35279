"""The pipeline's own launch, for every launcher combination a recipe can express (launch.py).

Unit tests (milliseconds): the command each combination produces, the batch arithmetic against DeepSpeed's
own `DeepSpeedConfig`, and the one-line `validate` errors. The end-to-end tests (slow, multiprocess) run a
reduced quickstart through `distillkit-scd run` under each launch and compare per-step losses with the
1-process run; see `test_pipeline_under_launcher`.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest
import yaml

from distillkit_scd.config import RecipeError, recipe_from_dict
from distillkit_scd.launch import accelerate_command, check_launch, deepspeed_batch, resolve_launch

REPO = Path(__file__).resolve().parents[1]
ZERO3 = str(REPO / "recipes" / "deepspeed" / "zero3.json")
A800 = str(REPO / "recipes" / "accelerate" / "8xA800.yaml")
CPU_ZERO3 = str(REPO / "recipes" / "accelerate" / "cpu_zero3.yaml")


def _recipe(tmp_path, launcher=None, optim=None):
    data = {"name": "t", "output_dir": str(tmp_path / "out"), "task": {"name": "synthetic"},
            "models": {"teacher": "tiny:teacher", "student": "tiny:student"},
            "optim": {"per_device_train_batch_size": 8, **(optim or {})}, "launcher": launcher or {}}
    return recipe_from_dict(data)


def _flags(cmd: list[str]) -> list[str]:
    """The accelerate flags of a command, without the interpreter, `-m accelerate.commands.launch` and the port."""
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"], cmd
    flags = cmd[3:]
    if "--main_process_port" in flags:
        at = flags.index("--main_process_port")
        assert int(flags[at + 1]) > 0
        flags = flags[:at] + flags[at + 2:]
    return flags


def test_every_launcher_combination_gives_its_launch(tmp_path):
    """num_processes alone → DDP (--multi_gpu, --mixed_precision); deepspeed_config alone → DeepSpeed (never
    --multi_gpu), also for one process; accelerate_config + deepspeed_config → the file, the recipe's JSON
    and the recipe's process count (overriding the file's 8); forward-only stages never get DeepSpeed."""
    one = _recipe(tmp_path)
    assert accelerate_command(one, "sft") == [sys.executable]
    ddp = _recipe(tmp_path, {"num_processes": 2, "mixed_precision": "bf16"})
    assert _flags(accelerate_command(ddp, "distill")) == ["--multi_gpu", "--num_processes", "2",
                                                           "--mixed_precision", "bf16"]
    ds = _recipe(tmp_path, {"num_processes": 2, "deepspeed_config": ZERO3})
    assert _flags(accelerate_command(ds, "sft")) == ["--use_deepspeed", "--deepspeed_config_file", ZERO3,
                                                      "--num_processes", "2"]
    ds1 = _recipe(tmp_path, {"deepspeed_config": ZERO3})
    assert _flags(accelerate_command(ds1, "sft"))[-2:] == ["--num_processes", "1"]
    paper = _recipe(tmp_path, {"num_processes": 2, "accelerate_config": A800, "deepspeed_config": ZERO3,
                               "mixed_precision": "bf16"})
    flags = _flags(accelerate_command(paper, "distill"))
    assert flags == ["--config_file", A800, "--use_deepspeed", "--deepspeed_config_file", ZERO3,
                     "--num_processes", "2"]  # precision: the JSON's "auto", filled from the recipe
    file_only = _recipe(tmp_path, {"num_processes": 2, "accelerate_config": CPU_ZERO3})
    assert resolve_launch(file_only).deepspeed_file == "recipes/deepspeed/zero3.json"
    assert _flags(accelerate_command(file_only, "sft")) == ["--config_file", CPU_ZERO3, "--num_processes", "2"]
    for recipe in (one, ds1):
        assert accelerate_command(recipe, "evaluate") == [sys.executable]
    for stage in ("evaluate", "aw-table", "signals"):
        cmd = accelerate_command(paper, stage)
        assert "--use_deepspeed" not in cmd and "--config_file" not in cmd


@pytest.mark.parametrize("tb,mb,ga", list(itertools.product((None, 8, 12, 16, 32), (None, 2, 4, 8), (None, 1, 2))))
@pytest.mark.parametrize("world", [1, 2, 3])
def test_deepspeed_batch_equals_deepspeed_config(tb, mb, ga, world):
    """Our completion of the batch triple equals DeepSpeed's `DeepSpeedConfig` (its own code, fed the same
    values and world size), including which combinations its assertion rejects."""
    config = pytest.importorskip("deepspeed.runtime.config")
    ref = config.DeepSpeedConfig.__new__(config.DeepSpeedConfig)
    ref.train_batch_size, ref.train_micro_batch_size_per_gpu, ref.gradient_accumulation_steps = tb, mb, ga
    ref.world_size = world
    try:
        ref._configure_train_batch_size()
        want = (ref.train_batch_size, ref.train_micro_batch_size_per_gpu, ref.gradient_accumulation_steps)
    except AssertionError:
        want = None
    try:
        got = deepspeed_batch(tb, mb, ga, world)
        if min(got) <= 0 or got[0] != got[1] * got[2] * world:
            got = None
    except ValueError:
        got = None
    assert got == want


def _ds(tmp_path, **fields) -> str:
    base = json.loads(Path(ZERO3).read_text())
    base.update(fields)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(base))
    return str(path)


@pytest.mark.parametrize("fields,match", [
    ({"train_batch_size": 8}, r"train_batch_size=8.*8 × 1 × 2.*per_device_train_batch_size=8 × "
                              r"optim.gradient_accumulation_steps=1 × launcher.num_processes=2 = 16"),
    ({"train_batch_size": 32, "gradient_accumulation_steps": "auto"}, r"train_batch_size=32"),
    ({"train_micro_batch_size_per_gpu": 4}, r"train_micro_batch_size_per_gpu=4"),
    ({"gradient_accumulation_steps": 2}, r"gradient_accumulation_steps=2"),
    ({"bf16": {"enabled": True}}, r"bf16.enabled is True but launcher.mixed_precision is 'no'"),
    ({"gradient_clipping": 0.5}, r"gradient_clipping is 0.5 but optim.max_grad_norm is 1.0"),
    ({"optimizer": {"type": "AdamW", "params": {"lr": 1e-5}}}, r"optimizer.params.lr"),
    ({"scheduler": {"type": "WarmupLR"}}, r"scheduler section"),
    ({"zero_optimization": {"stage": 3}}, r"stage3_gather_16bit_weights_on_model_save"),
])
def test_validate_refuses_what_deepspeed_or_transformers_would(tmp_path, fields, match):
    """A DeepSpeed JSON the launch would reject fails `check_launch` (what `validate` and `run` call) in one
    line naming the JSON, its fields and the recipe's; the shipped JSONs pass."""
    recipe = _recipe(tmp_path, {"num_processes": 2, "deepspeed_config": _ds(tmp_path, **fields)})
    with pytest.raises(RecipeError, match=match) as err:
        check_launch(recipe, "r.yaml")
    assert "\n" not in str(err.value) and str(err.value).startswith("r.yaml: DeepSpeed config ")


def test_fixed_values_that_agree_pass_and_shipped_configs_pass(tmp_path):
    """Fixed values equal to the recipe's arithmetic are accepted (DeepSpeed would accept them); so are the
    shipped JSONs and accelerate configs, and every paper recipe as written."""
    fixed = _ds(tmp_path, train_batch_size=48, train_micro_batch_size_per_gpu=8, gradient_accumulation_steps=2)
    plan = check_launch(_recipe(tmp_path, {"num_processes": 3, "deepspeed_config": fixed},
                                {"gradient_accumulation_steps": 2}))
    assert (plan.mode, plan.global_batch) == ("deepspeed", 48)
    for ds in sorted((REPO / "recipes" / "deepspeed").glob("*.json")):
        for acc in [None, *sorted((REPO / "recipes" / "accelerate").glob("*.yaml"))]:
            check_launch(_recipe(tmp_path, {"num_processes": 2, "deepspeed_config": str(ds),
                                            "accelerate_config": acc and str(acc), "mixed_precision": "bf16"}))


def test_paper_recipes_validate(monkeypatch):
    from distillkit_scd.config import load_recipe

    monkeypatch.chdir(REPO)  # the paper recipes' launcher paths are relative to the repository root
    for path in sorted((REPO / "recipes" / "paper").glob("*.yaml")):
        plan = check_launch(load_recipe(path), str(path))
        assert plan.mode == "deepspeed" and plan.global_batch == 8, path


def test_accelerate_config_refusals(tmp_path):
    """FSDP is refused (the loss reads lm_head weights outside their forward); inline DeepSpeed settings of an
    accelerate config must agree with the recipe; its mixed_precision must too."""
    def acc(**fields) -> str:
        path = tmp_path / f"acc{len(list(tmp_path.glob('acc*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump({"distributed_type": "DEEPSPEED", "num_processes": 8, **fields}))
        return str(path)

    cases = [
        (acc(distributed_type="FSDP"), {}, r"distributed_type FSDP is not supported"),
        (acc(deepspeed_config={"zero_stage": 3, "gradient_accumulation_steps": 4}), {},
         r"deepspeed_config.gradient_accumulation_steps is 4 but optim.gradient_accumulation_steps is 1"),
        (acc(deepspeed_config={"zero_stage": 3}), {}, r"zero3_save_16bit_model"),
        (acc(mixed_precision="fp16", deepspeed_config={"deepspeed_config_file": ZERO3}), {"mixed_precision": "bf16"},
         r"sets mixed_precision 'fp16' but launcher.mixed_precision is 'bf16'"),
    ]
    for path, extra, match in cases:
        with pytest.raises(RecipeError, match=match):
            check_launch(_recipe(tmp_path, {"num_processes": 2, "accelerate_config": path, **extra}), "r.yaml")
