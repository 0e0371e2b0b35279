"""The distillation stage gives the same training run however it is launched, and the same steps however
a batch is split into micro-batches.

Launch modes (TD and TAID on `synthetic`, tiny models, 5 optimizer steps, global batch 4 in every mode):
  plain         python -m distillkit_scd distill …                       1 process × batch 4
  accelerate_1  accelerate launch --cpu --num_processes 1 …              1 process × batch 4 (TD only: one process
                                                                         runs TAID as plain does; TAID's multi-process
                                                                         paths are ddp_2 and zero3_2)
  ddp_2         accelerate launch --multi_gpu --num_processes 2 …        2 processes × batch 2 (DDP, gloo)
  zero3_2       accelerate launch --use_deepspeed (recipes/deepspeed/zero3.json) --num_processes 2 …
                                                                         2 processes × batch 2 (ZeRO-3, gloo)
Accelerate's sampler hands consecutive micro-batches of one seeded permutation to the ranks, so the two
halves of a global batch are the rows the single process sees in its batch of 4. The per-step logged
values (trainer_state.json `log_history` of the stage-end checkpoint: loss, loss_ce, loss_distill,
grad_norm, TAID's taid_t) and the saved weights must match the plain run to float32 reduction-order
tolerance, not bitwise: with 2 processes token sums are split per rank and added by an all-reduce (and
ZeRO-3 reduce-scatters gradients), and each rank pads its half-batch to its own length, so float32 sums
are taken in another order (observed: logged values ≲ 3e-7 relative apart; the tolerance is 2e-5). Weights
get an absolute tolerance of 2e-5 = 0.2 % of one step (lr 1e-2): AdamW normalises each element's update, so
an element whose gradient is ~0 turns reduction-order noise into a visible update difference (observed
2.3e-6). A lost gradient (e.g. the lm_head's under ZeRO-3) moves weights by ~lr, 500× that.

Without a GPU, accelerate only forms a process group from the launched processes when told the run is on
CPU: `use_cpu` (DDP) or `ddp_backend: gloo` (DeepSpeed). `training_args.build_sft_config` sets them on a
CPU-only machine, so these launches use the recipe as written; without them `DistillationTrainer` refuses
to start (each process would train alone on the full data).

Timing on the shared 2-core box, 1 thread per process (whole file, the 6 launch-mode tests ran 8 launches, now 5 tests and 7):
~105 s on transformers 5.23 / trl 1.16, ~145 s on 4.57 / 0.25; of that the SFT fixture ~8 s, plain runs
~7 s, accelerate_1 ~11 s, ddp_2 ~11–14 s, zero3_2 ~14–23 s per launch, mostly imports. DeepSpeed JIT-builds
its CPU shared-memory comm op once per machine and torch (~70 s, cached in ~/.cache/torch_extensions).
The gradient-accumulation tests take ~1 s each, the tied-embedding ZeRO-3 test ~18 s.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
STEPS = 5
GLOBAL_BATCH = 4
RTOL = 2e-5
WEIGHT_ATOL = 2e-5
KEYS = ("loss", "loss_ce", "loss_distill", "grad_norm")

RECIPE = """
name: launch_modes
output_dir: {out}
seed: 7
models: {{teacher: "tiny:teacher", student: "tiny:student"}}
task: {{name: synthetic, max_length: 48, options: {{num_train: 32, num_test: 8}}}}
optim: {{per_device_train_batch_size: {batch}, learning_rate: 1.0e-2, logging_steps: 1, warmup_ratio: 0.0}}
sft: {{num_checkpoints: 1, teacher: {{num_train_epochs: 1}}, student: {{num_train_epochs: 1}}}}
distill: {{steps_per_stage: {steps}, methods: [td, taid]}}
evaluation: {{batch_size: 8, zero_shot: false}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launcher(mode: str) -> tuple[list[str], list[str]]:
    """(command prefix up to `-m distillkit_scd`, extra `--set` overrides) for a launch mode."""
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    half = [f"optim.per_device_train_batch_size={GLOBAL_BATCH // 2}"]
    if mode == "plain":
        return [sys.executable, "-m", "distillkit_scd"], []
    if mode == "accelerate_1":
        return accelerate + ["--cpu", "--num_processes", "1", "-m", "distillkit_scd"], []
    port = ["--main_process_port", str(_free_port())]
    if mode == "ddp_2":
        return (accelerate + ["--multi_gpu", "--num_processes", "2", *port, "-m", "distillkit_scd"],
                half)  # training_args.build_sft_config sets use_cpu on a CPU-only machine
    if mode == "zero3_2":
        config = str(REPO / "recipes" / "deepspeed" / "zero3.json")
        return (accelerate + ["--use_deepspeed", "--deepspeed_config_file", config, "--num_processes", "2", *port,
                              "-m", "distillkit_scd"], half)  # and ddp_backend gloo under DeepSpeed
    raise ValueError(f"unknown launch mode {mode!r}")


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """A run folder with the teacher and student SFT done (in-process, once per module) and its recipe."""
    from distillkit_scd.config import load_recipe
    from distillkit_scd.models.refs import prepare_models
    from distillkit_scd.training.sft import run_sft

    root = tmp_path_factory.mktemp("launch_modes")
    path = root / "recipe.yaml"
    path.write_text(RECIPE.format(out=root / "base", batch=GLOBAL_BATCH, steps=STEPS))
    recipe = load_recipe(path)
    prepare_models(recipe)
    run_sft(recipe, "teacher")
    run_sft(recipe, "student")
    return path, root


@pytest.fixture(scope="module")
def launched(sft_run):
    """launched(mode, method) → (per-step log entries, final weights); each launch runs once per module."""
    from safetensors.torch import load_file

    recipe_path, root = sft_run
    cache: dict = {}

    def run(mode: str, method: str):
        if (mode, method) in cache:
            return cache[mode, method]
        out = root / f"{mode}-{method}"
        shutil.copytree(root / "base", out, ignore=shutil.ignore_patterns("distill"))
        prefix, sets = _launcher(mode)
        cmd = [*prefix, "distill", str(recipe_path), "--method", method, "--set", f"output_dir={out}"]
        for item in sets:
            cmd += ["--set", item]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, f"{mode} {method} failed:\n{' '.join(cmd)}\n{proc.stderr[-4000:]}"
        ckpt = out / "distill" / method / f"checkpoint-{STEPS}"
        history = json.loads((ckpt / "trainer_state.json").read_text())["log_history"]
        steps = [e for e in history if "loss" in e]
        assert [e["step"] for e in steps] == list(range(1, STEPS + 1)), f"{mode} {method}: logged steps {steps}"
        cache[mode, method] = steps, load_file(str(ckpt / "model.safetensors"))
        return cache[mode, method]

    return run


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("mode,method", [("accelerate_1", "td"), ("ddp_2", "td"), ("ddp_2", "taid"),
                                         ("zero3_2", "td"), ("zero3_2", "taid")])
def test_launch_mode_matches_plain_python(launched, mode, method):
    """Same global batch ⇒ every step's loss, CE, distillation term, gradient norm (and TAID's t) and the
    final weights equal the plain-Python run's, to float32 reduction-order tolerance (module docstring).
    zero3_2 is the proof that the ZeRO-3-partitioned lm_head weights are gathered for the loss and get
    their gradient: the losses after step 1 and the weights depend on it."""
    want_steps, want_weights = launched("plain", method)
    got_steps, got_weights = launched(mode, method)
    keys = KEYS + (("taid_t",) if method == "taid" else ())
    for want, got in zip(want_steps, got_steps):
        for key in keys:
            assert got[key] == pytest.approx(want[key], rel=RTOL, abs=1e-6), (
                f"{mode} {method} step {want['step']} {key}: {got[key]!r} vs plain {want[key]!r}")
    if method == "taid":  # t must actually move, or comparing it shows nothing
        assert want_steps[-1]["taid_t"] > want_steps[0]["taid_t"]
    assert got_weights.keys() == want_weights.keys()
    for name, want in want_weights.items():
        torch.testing.assert_close(got_weights[name], want, rtol=0, atol=WEIGHT_ATOL, msg=lambda m, name=name: f"{name}: {m}")


# --------------------------------------------------------------------------------------------------
# Gradient accumulation through the real trainer (in-process, one process).
# --------------------------------------------------------------------------------------------------


def _ga_rows(tokenizer, n: int = 8) -> list[dict]:
    """Rows of different lengths (so batches of 4 are padded, micro-batches of 1 are not) and label counts,
    each with its own AW, as the distill stage's dataset has them."""
    gen = torch.Generator().manual_seed(11)
    rows = []
    for i in range(n):
        length = 9 + 3 * i
        ids = torch.randint(3, tokenizer.vocab_size, (length,), generator=gen).tolist()
        prompt = 3 + (i % 4)
        rows.append({"id": f"r{i}", "input_ids": ids, "labels": [-100] * prompt + ids[prompt:],
                     "aw": [0.1 + 0.8 * ((i * 5) % n) / n], "sample_index": i})
    return rows


def _train_ga(tiny_pair, tokenizer, tmp_path, method: str, batch: int, accumulation: int, steps: int = 2,
              no_loss_kwargs: bool = False, **overrides):
    """Train the tiny student `steps` optimizer steps on the rows in order; (per-step logs, weights).
    `no_loss_kwargs`: the student declares `accepts_loss_kwargs = False`, as some transformers models do.
    `overrides` replace SFTConfig fields."""
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from trl import SFTConfig

    from distillkit_scd.data.collate import DistillationCollator
    from distillkit_scd.losses import LossSpec
    from distillkit_scd.models.loading import load_model
    from distillkit_scd.training.trainer import DistillationTrainer

    class InOrder(DistillationTrainer):
        def _get_train_sampler(self, *args, **kwargs):  # same samples in the same order, no shuffle
            return SequentialSampler(self.train_dataset)

    teacher_dir, student_dir = tiny_pair
    student, teacher = load_model(str(student_dir)), load_model(str(teacher_dir))
    for model in (student, teacher):
        assert model.config.attention_dropout == 0.0  # dropout off: micro-batching cannot change the noise
    if no_loss_kwargs:
        student.accepts_loss_kwargs = False
    settings = dict(
        output_dir=str(tmp_path / f"{method}-{batch}x{accumulation}"), per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation, max_steps=steps, learning_rate=0.5, lr_scheduler_type="constant",
        optim="sgd",  # SGD: weights move by lr·gradient, so a mis-scaled gradient shows (AdamW would hide it)
        max_grad_norm=1e9,  # norm computed and logged, never clipped
        logging_steps=1, save_strategy="no", report_to="none", remove_unused_columns=False, seed=0,
        dataset_kwargs={"skip_prepare_dataset": True}, disable_tqdm=True, bf16=False, fp16=False,
    )
    args = SFTConfig(**{**settings, **overrides})
    trainer = InOrder(model=student, args=args, train_dataset=Dataset.from_list(_ga_rows(tokenizer)),
                      processing_class=tokenizer, data_collator=DistillationCollator(tokenizer.pad_token_id),
                      teacher_model=teacher, loss_spec=LossSpec(alpha=0.3, chunk_size=7), use_aw=method == "aw")
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    if trainer.is_deepspeed_enabled:  # ZeRO-3 keeps partitions; the worker compares logs only
        return logs, None
    return logs, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("method", ["td", "aw"])
def test_gradient_accumulation_4x1_equals_1x4(tiny_pair, tiny_tokenizer, tmp_path, method):
    """The real DistillationTrainer, TD (α = 0.3) and AW (each sample's own weight from the `aw` column):
    per-device batch 4 × 1 accumulation step and 1 × 4 see the same 8 rows in the same order and give the
    same loss, CE, distillation term and gradient norm at each optimizer step, and the same weights after
    2 SGD steps, to float32 tolerance. Rows carry different label counts, so a per-micro-batch mean (instead
    of transformers' `num_items_in_batch` over the accumulated batch) would weight tokens unequally and fail.
    The 1 × 4 student declares `accepts_loss_kwargs = False` (as some transformers models do): transformers
    would then pass no token count and divide each micro-batch's loss by 4 again, unless the trainer opts in."""
    from safetensors.torch import load_file

    whole, whole_weights = _train_ga(tiny_pair, tiny_tokenizer, tmp_path, method, batch=4, accumulation=1)
    split, split_weights = _train_ga(tiny_pair, tiny_tokenizer, tmp_path, method, batch=1, accumulation=4,
                                     no_loss_kwargs=True)
    assert [e["step"] for e in whole] == [e["step"] for e in split] == [1, 2]
    for a, b in zip(whole, split):
        for key in ("loss", "loss_ce", "loss_distill", "loss_mean_weight", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), f"step {a['step']} {key}: 1×4 {b[key]} vs 4×1 {a[key]}"
    if method == "aw":  # the token-mean weight is the AW mix, not α
        assert whole[0]["loss_mean_weight"] != pytest.approx(0.3)
    for name, want in whole_weights.items():
        torch.testing.assert_close(split_weights[name], want, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
    start = load_file(str(tiny_pair[1] / "model.safetensors"))
    moved = max((whole_weights[k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-3  # the steps did change the weights, so comparing them shows something


_TIED_ZERO3_WORKER = r"""
import json, os, sys
from pathlib import Path
sys.path.insert(0, os.environ["TESTS"])
import torch._dynamo  # noqa: F401  (first imported inside DeepSpeed, it clashes with its patches; see test_teachers)
from distillkit_scd.models.loading import load_tokenizer
from test_launch_modes import _train_ga

teacher, student, out = sys.argv[1:4]
logs, _ = _train_ga((Path(teacher), Path(student)), load_tokenizer(student), Path(out), "aw", batch=2,
                    accumulation=1, steps=3, ddp_backend="gloo", optim="adamw_torch", learning_rate=1e-2)
if int(os.environ["RANK"]) == 0:
    Path(out, "logs.json").write_text(json.dumps(logs))
"""


def _tied_copy(source: Path, dest: Path, seed: int) -> Path:
    """The tiny model of `source` with tied input/output embeddings (new random weights), saved to `dest`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from distillkit_scd.models.loading import load_tokenizer

    config = AutoConfig.from_pretrained(source)
    config.tie_word_embeddings = True
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    model.save_pretrained(dest)
    load_tokenizer(str(source)).save_pretrained(dest)
    return dest


@pytest.mark.slow
@pytest.mark.multiprocess
def test_zero3_tied_embeddings_match_one_process(tiny_pair, tmp_path):
    """ZeRO-3 on 2 CPU processes × batch 2, student and teacher with tied embeddings (the lm_head weight is
    the partitioned input embedding, used by the embedding lookup inside the forward and by the loss
    outside it): AW loss, its parts and the gradient norm equal one plain process × batch 4 at each of 3
    AdamW steps (float32 reduction-order tolerance, see the module docstring)."""
    import subprocess

    pytest.importorskip("deepspeed")
    from distillkit_scd.models.loading import load_tokenizer

    teacher = _tied_copy(tiny_pair[0], tmp_path / "teacher", seed=1)
    student = _tied_copy(tiny_pair[1], tmp_path / "student", seed=2)
    want, _ = _train_ga((teacher, student), load_tokenizer(str(student)), tmp_path / "plain", "aw", batch=4,
                        accumulation=1, steps=3, optim="adamw_torch", learning_rate=1e-2)
    worker = tmp_path / "worker.py"
    worker.write_text(_TIED_ZERO3_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REPO": str(REPO), "TESTS": str(REPO / "tests")}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--use_deepspeed", "--deepspeed_config_file",
              str(REPO / "recipes" / "deepspeed" / "zero3.json"), "--num_processes", "2", "--main_process_port",
              str(_free_port())]
    proc = subprocess.run([*launch, str(worker), str(teacher), str(student), str(tmp_path / "zero3")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads((tmp_path / "zero3" / "logs.json").read_text())
    assert [e["step"] for e in got] == [e["step"] for e in want] == [1, 2, 3]
    for a, b in zip(want, got):
        for key in ("loss", "loss_ce", "loss_distill", "loss_mean_weight", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=RTOL), f"step {a['step']} {key}: ZeRO-3 {b[key]} vs {a[key]}"


# --------------------------------------------------------------------------------------------------
# The launch guards and the forward redirection, unit-level.
# --------------------------------------------------------------------------------------------------


def test_world_size_guard(monkeypatch):
    """Processes launched as one job (WORLD_SIZE) but not joined into one (accelerate sees 1) are refused;
    a matching count, or no launcher, passes."""
    from distillkit_scd.config.launch import check_world_size

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    check_world_size(1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_world_size(2)
    with pytest.raises(ValueError, match=r"WORLD_SIZE=2 .* sees 1.*use_cpu.*ddp_backend: gloo"):
        check_world_size(1)


def test_zero3_save_guard_and_shipped_configs():
    """ZeRO-3 without gathered weights on save is refused (its checkpoints hold no model weights); ZeRO-2
    and every shipped DeepSpeed config pass."""
    from distillkit_scd.config.launch import check_zero3_saves_weights

    with pytest.raises(ValueError, match="stage3_gather_16bit_weights_on_model_save"):
        check_zero3_saves_weights({"zero_optimization": {"stage": 3}})
    check_zero3_saves_weights({"zero_optimization": {"stage": 2}})
    configs = sorted((REPO / "recipes" / "deepspeed").glob("*.json"))
    assert configs
    for path in configs:
        check_zero3_saves_weights(json.loads(path.read_text()))


def test_unwrap_and_external_params_leave_plain_modules_alone():
    """`unwrap` takes the module out of a parallel wrapper (here `DataParallel`, accelerate's list also holds
    DDP, DeepSpeed's engine and FSDP) and nested ones, keeps accelerate's instance-level forward, and returns a
    plain module itself, without importing DeepSpeed (a fresh process); `register_external_params` has nothing
    to do for parameters that are not ZeRO-3-partitioned."""
    from distillkit_scd.utils.distributed import register_external_params, unwrap

    module = torch.nn.Linear(2, 2)
    module.forward = module.forward  # an instance-level forward, as accelerate's autocast wrapper installs
    assert unwrap(module) is module
    assert unwrap(torch.nn.DataParallel(torch.nn.DataParallel(module))) is module and "forward" in vars(module)
    register_external_params(module, module.weight, None)
    assert not hasattr(module, "_external_params")  # what DeepSpeed's registration would create
    code = ("import sys, torch; from distillkit_scd.utils.distributed import register_external_params, unwrap\n"
            "m = torch.nn.Linear(2, 2); assert unwrap(m) is m; register_external_params(m, m.weight)\n"
            "print('DEEPSPEED', 'deepspeed' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "DEEPSPEED False" in out.stdout, out.stdout + out.stderr[-2000:]


def test_call_as_forward_runs_through_wrapper_hooks_and_restores_forward():
    """fn runs as the module's forward, called through the wrapper (its hooks fire once, with fn's result);
    afterwards `forward` is the class's method again (or the instance's own wrapper, when it had one)."""
    from distillkit_scd.utils.distributed import call_as_forward

    module = torch.nn.Linear(2, 2)
    seen = []
    module.register_forward_hook(lambda mod, args, out: seen.append(out))
    assert call_as_forward(module, module, lambda x: x * 3, torch.ones(1)).tolist() == [3.0]
    assert [t.tolist() for t in seen] == [[3.0]] and "forward" not in vars(module)
    assert module(torch.zeros(1, 2)).shape == (1, 2)  # the real forward is back

    own = module.forward
    module.forward = own  # an instance-level forward, as accelerate's autocast wrapper installs
    call_as_forward(module, module, lambda: None)
    assert vars(module)["forward"] is own


def test_release_process_group_destroys_the_group_and_is_idempotent(tmp_path):
    """A stage process leaves no process group to the interpreter's teardown (a gloo group there can abort
    a finished process); without one the call does nothing."""
    import torch.distributed as dist

    from distillkit_scd.utils.distributed import release_process_group

    release_process_group()  # no group: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    release_process_group()
    assert not dist.is_initialized()
