"""The pipeline's own launch, for every launcher combination a recipe can express (config/launch.py).

Unit tests (milliseconds): the command each combination produces, the batch arithmetic against DeepSpeed's
own `DeepSpeedConfig`, and the one-line `validate` errors. The end-to-end tests (slow, multiprocess) run a
reduced quickstart through `distillkit-scd run` under each launch and compare per-step losses with the
1-process run (tolerance of tests/test_launch_modes.py) and the sharded forward-only stages with one process.

Each stack runs one of the two pipeline launches (CI time): DDP on the latest stack, ZeRO-3 on the distillkit
stack; both run every stage, the forward-only ones as 2 data-parallel processes. Timing (the shared 2-core box
while other jobs ran, load average 6–14, 1 thread per process): the DDP pipeline test 281 s on transformers
5.23 (320 s on 4.57, where it no longer runs); the ZeRO-3 test
520 s, of which ~180 s DeepSpeed's one-time build of its CPU comm op into this venv's extension cache. Almost
all of it is process start-up: ~12–40 s per launched stage against ~1–5 s in-process (stage seconds in
OUT/stages/summary.json). Unit tests: ~10 s.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from distillkit_scd.config import RecipeError, recipe_from_dict
from distillkit_scd.config.launch import accelerate_command, check_launch, deepspeed_batch, resolve_launch

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


def test_trainer_gets_deepspeed_from_accelerate_only(tmp_path, monkeypatch):
    """Launched by accelerate with DeepSpeed, transformers is not handed the JSON as well (its copy is filled
    before the process group exists: the issue's `16 != 16 * 1 * 2`); a launch with another JSON than the
    recipe's is refused, and so are several CPU processes without accelerate's DeepSpeed launch."""
    from distillkit_scd.training.training_args import _deepspeed_for_transformers

    recipe = _recipe(tmp_path, {"num_processes": 2, "deepspeed_config": ZERO3})
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", ZERO3)
    assert _deepspeed_for_transformers(recipe) is None
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(tmp_path / "other.json"))
    with pytest.raises(ValueError, match=r"accelerate was launched with --deepspeed_config_file .*other.json"):
        _deepspeed_for_transformers(recipe)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert _deepspeed_for_transformers(recipe) == ZERO3  # one plain process: transformers' own path
    if not torch.cuda.is_available():
        monkeypatch.setenv("WORLD_SIZE", "2")
        with pytest.raises(ValueError, match=r"several CPU processes need accelerate's DeepSpeed launch"):
            _deepspeed_for_transformers(recipe)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for CPU-only machines")
def test_deepspeed_mixed_precision_on_cpu_is_one_clear_error(tmp_path, monkeypatch):
    """bf16 under DeepSpeed on a CPU-only machine: one line naming launcher.mixed_precision, not transformers'
    "Your setup doesn't support bf16/gpu" from every rank (DDP runs bf16 on CPU)."""
    from distillkit_scd.training.training_args import build_sft_config

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    recipe = _recipe(tmp_path, {"num_processes": 2, "mixed_precision": "bf16"})
    with pytest.raises(ValueError, match=r"launcher.mixed_precision: bf16 with DeepSpeed needs a GPU"):
        build_sft_config(recipe, tmp_path / "o", 1e-3)


# --------------------------------------------------------------------------------------------------
# End to end: `distillkit-scd run` of a reduced quickstart under each launcher (slow, multiprocess).
# --------------------------------------------------------------------------------------------------
# The quickstart reduced to what still runs every stage: TD and SCD w/ AW (so the AW table, the SCD
# selector and the teacher swaps run), N = 2 teacher checkpoints, T = 2 steps per stage, 32 train rows, no
# zero-shot rows. Global batch 4 in every mode: 1 process × 4, or 2 processes × 2.

E2E = """
name: launch_path
output_dir: {out}
seed: 7
models: {{teacher: "tiny:teacher", student: "tiny:student"}}
task: {{name: synthetic, max_length: 48, options: {{num_train: 32, num_test: 8}}}}
optim: {{per_device_train_batch_size: 4, learning_rate: 3.0e-3, logging_steps: 1, warmup_ratio: 0.0}}
sft: {{num_checkpoints: 2, teacher: {{num_train_epochs: 2}}, student: {{num_train_epochs: 1}}}}
distill: {{steps_per_stage: 2, methods: [td, scd_aw], scd: {{probe_size: 8}}}}
evaluation: {{batch_size: 4, zero_shot: false}}
"""
HALF = ["launcher.num_processes=2", "optim.per_device_train_batch_size=2"]
MODES = {  # --set overrides of each launch; ZeRO-3 also takes the cached-signal path
    "ddp": [*HALF, "distill.methods=[scd_aw]"],  # TD under DDP: tests/test_launch_modes.py (CI time)
    # TD under ZeRO-3 runs in the deepspeed_config-alone re-run of the same folder (CI time)
    "zero3": [*HALF, "launcher.accelerate_config=recipes/accelerate/cpu_zero3.yaml", "distill.teacher_signal=cached",
              "distill.methods=[scd_aw]"],
}
LOSS_KEYS = ("loss", "loss_ce", "loss_distill", "grad_norm")
E2E_RTOL = 2e-5  # tests/test_launch_modes.py: float32 reduction order across 2 processes


def _step_logs(run: Path, method: str) -> list[dict]:
    folder = run / "distill" / method
    last = max(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return [e for e in json.loads((last / "trainer_state.json").read_text())["log_history"] if "loss" in e]


def _chosen(run: Path) -> list[int]:
    log = json.loads((run / "distill" / "scd_aw" / "schedule_log.json").read_text())
    return [s["chosen"] for s in log["stages"]]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """e2e(name, sets, start_from=None, only=None) → run folder; the 1-process references run in-process."""
    import os
    import shutil
    import subprocess

    from distillkit_scd.pipeline.run import run_pipeline

    root = tmp_path_factory.mktemp("launch_path")
    recipe = root / "recipe.yaml"
    recipe.write_text(E2E.format(out=root / "reference"))
    cache: dict = {}

    def run(name: str, sets: list[str], start_from: str | None = None, only: list[str] | None = None) -> Path:
        if name in cache:
            return cache[name]
        out = root / name
        if start_from is not None:
            shutil.copytree(e2e_run(start_from), out)
        sets = [*sets, f"output_dir={out}"]
        if name.startswith("reference"):
            results = run_pipeline(recipe, sets, in_process=True)
            assert all(r.status in ("done", "skipped") for r in results), [vars(r) for r in results]
        else:
            cmd = [sys.executable, "-m", "distillkit_scd", "run", str(recipe), *(a for s in sets for a in ("--set", s))]
            cmd += ["--only", *only] if only else []
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, f"{name}: {' '.join(cmd)}\n{proc.stderr[-5000:]}"
        cache[name] = out
        return out

    def e2e_run(name: str) -> Path:
        return cache[name]

    return run


def _check_run(run: Path, reference: Path) -> dict:
    """Every stage done, a Table 1 with both rows, and TD's and SCD w/ AW's per-step losses equal to the
    1-process run's; returns the stage stamps."""
    summary = json.loads((run / "stages" / "summary.json").read_text())
    assert {s["status"] for s in summary["stages"]} == {"done"}, summary["stages"]
    table = (run / "report" / "table1.md").read_text()
    assert "SCD w/ AW" in table
    methods = [m for m in ("td", "scd_aw") if (run / "distill" / m).is_dir()]
    assert "scd_aw" in methods
    for method in methods:
        want, got = _step_logs(reference, method), _step_logs(run, method)
        assert [e["step"] for e in got] == [e["step"] for e in want] == [1, 2, 3, 4]
        for a, b in zip(want, got):
            for key in LOSS_KEYS:
                assert b[key] == pytest.approx(a[key], rel=E2E_RTOL, abs=1e-6), (
                    f"{run.name} {method} step {a['step']} {key}: {b[key]} vs 1 process {a[key]}")
    assert _chosen(run) == _chosen(reference)
    return {s["stage"]: s for s in summary["stages"]}


_TRANSFORMERS_5 = int(__import__("transformers").__version__.split(".")[0]) >= 5


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.skipif(not _TRANSFORMERS_5, reason="CI time: the DDP pipeline runs on the latest stack only (on 4.57, "
                    "the ZeRO-3 pipeline below runs every stage multi-process, sharded forward stages included, "
                    "and tests/test_launch_modes.py's ddp_2 runs distillation under DDP)")
def test_pipeline_under_ddp_and_sharded_forward_stages_equal_one_process(e2e):
    """`distillkit-scd run` with launcher.num_processes=2 (DDP): every stage runs, training stages under
    `accelerate launch --multi_gpu`, evaluation and the AW table as 2 data-parallel processes; SCD w/ AW logs
    the 1-process run's losses and makes its choices (TD under DDP: tests/test_launch_modes.py). The sharded stages' outputs equal one process's on the same models
    (the run's own SFT/distilled checkpoints, re-scored here in this process): every generation, metric and
    AW-table entry."""
    from safetensors.torch import load_file

    from distillkit_scd.config import load_recipe
    from distillkit_scd.evaluation.stage import run_evaluation
    from distillkit_scd.teachers.aw_table import TABLE_TENSORS, run_aw_table

    reference = e2e("reference", [])
    run = e2e("ddp", MODES["ddp"])
    stamps = _check_run(run, reference)
    assert "--multi_gpu --num_processes 2" in stamps["sft-teacher"]["command"]
    for stage in ("eval-teacher_sft", "eval-scd_aw", "aw-table"):
        assert "--multi_gpu --num_processes 2" in stamps[stage]["command"], stage
    sharded = {row: json.loads((run / "results" / row / "synthetic.json").read_text())
               for row in ("teacher_sft", "scd_aw")}
    table = load_file(str(run / "aw" / TABLE_TENSORS))
    (run / "aw" / "aw_table.json").unlink()  # recompute in this process (one shard) on the same models
    recipe = load_recipe(run / "resolved_recipe.yaml")
    run_aw_table(recipe)
    for name, tensor in load_file(str(run / "aw" / TABLE_TENSORS)).items():
        assert torch.equal(tensor, table[name]), name
    for row, got in sharded.items():
        want = json.loads(run_evaluation(recipe, row).read_text())
        assert got["metrics"] == want["metrics"] and got["samples"] == want["samples"], row
        assert len(want["samples"]) == 8


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.skipif(_TRANSFORMERS_5, reason="CI time: the ZeRO-3 pipeline runs on the distillkit stack only "
                    "(ZeRO-3 training on 5.x is covered by tests/test_launch_modes.py)")
def test_pipeline_under_zero3_accelerate_config_and_deepspeed_alone(e2e):
    """The paper recipes' launch (an accelerate config with DeepSpeed ZeRO-3: recipes/accelerate/cpu_zero3.yaml,
    the CPU mirror of 8xA800.yaml) with the cached-signal path: every stage, including the signals stage, the
    SCD selector's teacher swaps inside the ZeRO-3 teacher, and a Table 1; SCD w/ AW logs the 1-process cached
    run's losses and makes its choices. Then `launcher.deepspeed_config` alone runs TD's distillation in the
    same folder, launched with DeepSpeed (not --multi_gpu), and logs the 1-process run's TD losses."""
    pytest.importorskip("deepspeed")
    e2e("reference", [])
    reference = e2e("reference-cached", ["distill.teacher_signal=cached"], start_from="reference")
    run = e2e("zero3", MODES["zero3"])
    stamps = _check_run(run, reference)
    assert "--config_file recipes/accelerate/cpu_zero3.yaml --num_processes 2" in stamps["distill-scd_aw"]["command"]
    assert "accelerate" not in stamps["signals"]["command"]  # one process, by design
    alone = e2e("ds-alone", [*HALF, "distill.teacher_signal=cached", "launcher.deepspeed_config=recipes/deepspeed/zero3.json"],
                start_from="zero3", only=["distill-td"])
    stamps = {s["stage"]: s for s in json.loads((alone / "stages" / "summary.json").read_text())["stages"]}
    assert "--use_deepspeed --deepspeed_config_file recipes/deepspeed/zero3.json" in stamps["distill-td"]["command"]
    assert "--multi_gpu" not in stamps["distill-td"]["command"]
    for a, b in zip(_step_logs(reference, "td"), _step_logs(alone, "td")):
        for key in LOSS_KEYS:
            assert b[key] == pytest.approx(a[key], rel=E2E_RTOL, abs=1e-6), (key, a, b)
