"""How a recipe's stages are launched, in one place: process count, DDP or DeepSpeed, the accelerate
command, and the batch arithmetic DeepSpeed will assert — checked by `validate` before anything starts.

The `launcher` section can say four things, and each maps to one launch (tested in tests/test_launch_path.py):

  num_processes: 1, nothing else             one plain process (`python -m distillkit_scd …`)
  num_processes: N > 1                       `accelerate launch --multi_gpu --num_processes N` (DDP)
  deepspeed_config: FILE                     `accelerate launch --use_deepspeed --deepspeed_config_file FILE
                                             --num_processes N` (DeepSpeed, not DDP)
  accelerate_config: FILE (+ deepspeed_config) `accelerate launch --config_file FILE [--deepspeed_config_file …]
                                             --num_processes N`: the recipe's count and DeepSpeed JSON override
                                             the file's (accelerate's command line wins over its config file)

DeepSpeed always reaches the trainer through accelerate (its plugin carries the JSON and accelerate fills the
"auto" values once the process group exists); `training_args.build_sft_config` does not also hand the JSON to
transformers then, whose own copy is filled before the group exists (world size 1) and fails DeepSpeed's batch
assertion on CPU. Precision: DDP gets `--mixed_precision`; under DeepSpeed the JSON's "auto" bf16/fp16 are
filled from `launcher.mixed_precision`, so a fixed value there must agree with it.

Which stage launches how is its row's `launch` in the stage table (`config/stages.py`).
Forward-only stages: evaluation and the AW table of a multi-process recipe run as N plain data-parallel
processes (`--multi_gpu`, whole model per process, rows sharded and gathered; see `utils/sharding.py`); the signals
stage (one teacher pass per checkpoint, being reworked with the AW pass) runs as one process by design, and so
do all three when the accelerate config spans more than one machine.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from distillkit_scd.config import Recipe, RecipeError
from distillkit_scd.config.stages import STAGES, stage_spec

logger = logging.getLogger(__name__)

_SUPPORTED_TYPES = ("NO", "MULTI_GPU", "MULTI_CPU", "DEEPSPEED")


@dataclass(frozen=True)
class LaunchPlan:
    """What a recipe's launcher resolves to.

    mode: "single" (one plain process), "ddp" or "deepspeed".  world_size: processes of a training stage.
    deepspeed_file: the DeepSpeed JSON the trainer uses (the recipe's, else the accelerate config's).
    accelerate: the parsed accelerate config ({} when none).  num_machines: from the accelerate config.
    micro_batch, accumulation: per process and per optimizer step.  global_batch: their product × world_size.
    """

    mode: str
    world_size: int
    deepspeed_file: str | None
    accelerate: dict
    num_machines: int
    micro_batch: int
    accumulation: int

    @property
    def global_batch(self) -> int:
        return global_batch(self.micro_batch, self.accumulation, self.world_size)

    @property
    def forward_processes(self) -> int:
        """Processes of a forward-only stage: every training process on one machine, else one."""
        return self.world_size if self.num_machines == 1 else 1


def global_batch(micro_batch: int, accumulation: int, world_size: int) -> int:
    """Samples per optimizer step: micro batch × accumulation steps × processes (DeepSpeed's train_batch_size)."""
    return micro_batch * accumulation * world_size


def _read_accelerate(path: str) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise RecipeError(f"launcher.accelerate_config: cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"launcher.accelerate_config: {path}: expected a mapping, got {type(data).__name__}")
    return data


def read_deepspeed(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise RecipeError(f"DeepSpeed config {path}: cannot read it as JSON: {err}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"DeepSpeed config {path}: expected a JSON object, got {type(data).__name__}")
    return data


def resolve_launch(recipe: Recipe) -> LaunchPlan:
    """The launch a recipe describes. Raises RecipeError for an accelerate config we cannot run."""
    la, o = recipe.launcher, recipe.optim
    acc = _read_accelerate(la.accelerate_config) if la.accelerate_config else {}
    kind = str(acc.get("distributed_type", "NO")).upper()
    if acc and kind not in _SUPPORTED_TYPES:
        raise RecipeError(
            f"launcher.accelerate_config: {la.accelerate_config}: distributed_type {kind} is not supported; expected "
            f"one of {', '.join(_SUPPORTED_TYPES)} (the loss reads lm_head weights outside their forward; ZeRO-3 "
            "is handled, FSDP is not)")
    ds_file = la.deepspeed_config
    if ds_file is None and kind == "DEEPSPEED":
        ds_file = (acc.get("deepspeed_config") or {}).get("deepspeed_config_file")
    if ds_file is not None or kind == "DEEPSPEED":
        mode = "deepspeed"
    elif la.num_processes > 1 or acc:
        mode = "ddp"
    else:
        mode = "single"
    return LaunchPlan(mode, la.num_processes, ds_file, acc, int(acc.get("num_machines", 1) or 1),
                      o.per_device_train_batch_size, o.gradient_accumulation_steps)


def deepspeed_batch(train_batch: int | None, micro: int | None, accumulation: int | None,
                    world_size: int) -> tuple[int, int, int]:
    """DeepSpeed's own completion of (train_batch_size, train_micro_batch_size_per_gpu,
    gradient_accumulation_steps) from the values it was given (None = absent), as `DeepSpeedConfig` does.
    Raises ValueError when neither batch size is given."""
    tb, mb, ga = train_batch, micro, accumulation
    if tb is not None and mb is not None and ga is not None:
        return tb, mb, ga
    if tb is not None and mb is not None:
        return tb, mb, tb // mb // world_size
    if tb is not None and ga is not None:
        return tb, tb // world_size // ga, ga
    if mb is not None and ga is not None:
        return mb * ga * world_size, mb, ga
    if tb is not None:
        return tb, tb // world_size, 1
    if mb is not None:
        return mb * world_size, mb, 1
    raise ValueError("neither train_batch_size nor train_micro_batch_size_per_gpu is given")


def check_deepspeed_config(ds: dict, plan: LaunchPlan, recipe: Recipe, where: str) -> None:
    """Refuse a DeepSpeed JSON the launch would reject, in one line naming the fields: the batch triple
    (after transformers fills "auto" from the recipe and DeepSpeed completes what is absent, it must equal
    optim.per_device_train_batch_size, optim.gradient_accumulation_steps and their product × processes),
    fixed precision / clipping that contradicts the recipe, a fixed learning rate (stages use different
    ones), a DeepSpeed scheduler (our trainer owns the LR schedule), ZeRO-3 without gathered weights on save."""
    want = (plan.global_batch, plan.micro_batch, plan.accumulation)
    names = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
    given = []
    for name, value in zip(names, want):
        raw = ds.get(name)
        if raw is not None and raw != "auto" and not (isinstance(raw, int) and raw > 0):
            raise RecipeError(f"{where}: {name}: expected a positive integer or \"auto\", got {raw!r}")
        given.append(value if raw == "auto" else raw)
    try:
        got = deepspeed_batch(*given, plan.world_size)
    except ValueError as err:
        raise RecipeError(f"{where}: {err}; set train_micro_batch_size_per_gpu to \"auto\"") from None
    if got != want:
        fixed = ", ".join(f"{n}={ds[n]}" for n in names if n in ds and ds[n] != "auto") or "no fixed values"
        raise RecipeError(
            f"{where}: batch arithmetic disagrees with the recipe ({fixed}; DeepSpeed would use "
            f"{got[0]} = {got[1]} × {got[2]} × {plan.world_size} processes): the recipe gives "
            f"optim.per_device_train_batch_size={plan.micro_batch} × optim.gradient_accumulation_steps="
            f"{plan.accumulation} × launcher.num_processes={plan.world_size} = {want[0]}; set those DeepSpeed "
            "fields to \"auto\" or change the recipe")
    mp = recipe.launcher.mixed_precision
    for key in ("bf16", "fp16"):
        enabled = (ds.get(key) or {}).get("enabled", "auto")
        if enabled != "auto" and bool(enabled) != (mp == key):
            raise RecipeError(f"{where}: {key}.enabled is {enabled!r} but launcher.mixed_precision is {mp!r}; set "
                              f"{key}.enabled to \"auto\" (filled from launcher.mixed_precision) or change the recipe")
    clip = ds.get("gradient_clipping", "auto")
    if clip != "auto" and clip != recipe.optim.max_grad_norm:
        raise RecipeError(f"{where}: gradient_clipping is {clip!r} but optim.max_grad_norm is "
                          f"{recipe.optim.max_grad_norm}; set it to \"auto\" or change the recipe")
    lr = ((ds.get("optimizer") or {}).get("params") or {}).get("lr", "auto")
    if lr != "auto":
        raise RecipeError(f"{where}: optimizer.params.lr is {lr!r}; expected \"auto\" (each stage has its own "
                          "learning rate, from the recipe)")
    if "scheduler" in ds:
        raise RecipeError(f"{where}: has a scheduler section; remove it (the trainer builds the LR schedule "
                          "from optim and distill.steps_per_stage)")
    try:
        check_zero3_saves_weights(ds)
    except ValueError as err:
        raise RecipeError(f"{where}: {err}") from None


def check_launch(recipe: Recipe, source: str = "<recipe>") -> LaunchPlan:
    """Check that the recipe's launcher runs as written (see the module docstring); returns its plan.

    Raises:
        RecipeError: one line naming the file and fields (batch arithmetic, precision, an unsupported
            accelerate distributed_type, or an accelerate config whose inline DeepSpeed settings conflict).
    """
    try:
        plan = resolve_launch(recipe)
    except RecipeError as err:
        raise RecipeError(f"{source}: {err}") from None
    la = recipe.launcher
    acc = plan.accelerate
    file_count = acc.get("num_processes")
    if acc and file_count not in (None, la.num_processes):
        logger.info("launcher.num_processes=%d overrides num_processes: %s of %s", la.num_processes, file_count,
                    la.accelerate_config)
    if acc.get("mixed_precision") not in (None, "no", la.mixed_precision) and plan.mode == "deepspeed":
        raise RecipeError(f"{source}: launcher.accelerate_config: {la.accelerate_config} sets mixed_precision "
                          f"{acc['mixed_precision']!r} but launcher.mixed_precision is {la.mixed_precision!r}; "
                          "remove it from the accelerate config (the recipe's value is used)")
    if plan.mode != "deepspeed":
        return plan
    if plan.deepspeed_file is None:  # inline DeepSpeed settings in the accelerate config
        inline = acc.get("deepspeed_config") or {}
        ga = inline.get("gradient_accumulation_steps")
        if ga not in (None, "auto", plan.accumulation):
            raise RecipeError(f"{source}: launcher.accelerate_config: {la.accelerate_config}: deepspeed_config."
                              f"gradient_accumulation_steps is {ga} but optim.gradient_accumulation_steps is "
                              f"{plan.accumulation}; make them equal")
        if inline.get("zero_stage") == 3 and not inline.get("zero3_save_16bit_model", False):
            raise RecipeError(f"{source}: launcher.accelerate_config: {la.accelerate_config}: zero_stage 3 needs "
                              "deepspeed_config.zero3_save_16bit_model: true (later stages load checkpoints as "
                              "model folders)")
        return plan
    where = f"{source}: DeepSpeed config {plan.deepspeed_file}"
    try:
        check_deepspeed_config(read_deepspeed(plan.deepspeed_file), plan, recipe, where)
    except RecipeError as err:
        message = str(err)
        raise RecipeError(message if message.startswith(source) else f"{source}: {message}") from None
    return plan


def check_world_size(num_processes: int) -> None:
    """Refuse a launch whose processes do not form one training job.

    `accelerate launch --num_processes 2` without a GPU starts two processes, but accelerate only forms a
    process group from them when told the run is on CPU: otherwise every process trains alone on the full
    data (same batches on every rank, duplicated writes), silently. Raises ValueError naming the fix.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > 1 and num_processes != launched:
        raise ValueError(
            f"launched with WORLD_SIZE={launched} processes but the trainer sees {num_processes}: the processes "
            "do not form one job. Without a GPU: for DDP set training_args.use_cpu: true (or ACCELERATE_USE_CPU=1); "
            "for DeepSpeed launch with `accelerate launch --use_deepspeed --deepspeed_config_file FILE` (transformers "
            "ignores ddp_backend when training_args.deepspeed is set) and set training_args.ddp_backend: gloo."
        )


def check_zero3_saves_weights(ds_config: dict) -> None:
    """Under ZeRO-3 a checkpoint holds model weights only when they are gathered on save; our checkpoints
    are read back as model folders (teacher checkpoints, stage ends, evaluation). Raises ValueError."""
    zero = ds_config.get("zero_optimization", {})
    if zero.get("stage") == 3 and not zero.get("stage3_gather_16bit_weights_on_model_save", False):
        raise ValueError(
            "DeepSpeed zero_optimization.stage3_gather_16bit_weights_on_model_save is not true: ZeRO-3 "
            "checkpoints would hold no model weights (only DeepSpeed shards), and later stages load checkpoints "
            "as model folders. Set it to true in the DeepSpeed JSON (recipes/deepspeed/zero3.json does), or pass "
            "`--zero3_save_16bit_model true` to `accelerate launch --zero_stage 3`."
        )


def free_port() -> int:
    """An unused local TCP port (two runs on one machine must not share accelerate's default 29500)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_command(recipe: Recipe, stage_command: str, port: int | None = None) -> list[str]:
    """The command prefix (up to `-m`) that launches one stage command, or `[python]` for one plain process.

    The stage's row (`stages.STAGES`) decides: `training` stages (`sft`, `distill`) get the recipe's launch;
    `data_parallel` ones (`evaluate`, `aw-table`) get `plan.forward_processes` data-parallel processes without
    DeepSpeed (each holds the whole model); `single` ones one plain process. On one machine a free port is
    chosen unless the accelerate config names one. Raises ValueError for an unknown stage command.
    """
    plan = resolve_launch(recipe)
    la = recipe.launcher
    python = [sys.executable]
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    one_machine = plan.num_machines == 1
    if one_machine and "main_process_port" not in plan.accelerate:
        port_args = ["--main_process_port", str(port or free_port())]
    else:
        port_args = []
    launch = stage_spec(stage_command).launch  # the stage table's decision
    if launch == "data_parallel" and plan.forward_processes > 1:
        return cmd + ["--multi_gpu", "--num_processes", str(plan.forward_processes), *port_args]
    if launch != "training" or plan.mode == "single":
        return python
    if la.accelerate_config:
        cmd += ["--config_file", la.accelerate_config]
    if plan.mode == "deepspeed":
        if la.deepspeed_config:  # the recipe's JSON wins over the accelerate config's
            cmd += ["--use_deepspeed", "--deepspeed_config_file", la.deepspeed_config]
    elif not la.accelerate_config:  # DDP without a config file: torchrun-style processes (else accelerate starts one)
        cmd += ["--multi_gpu"]
    cmd += ["--num_processes", str(la.num_processes)]
    if plan.mode == "ddp" and la.mixed_precision != "no":
        cmd += ["--mixed_precision", la.mixed_precision]
    return cmd + port_args


def describe(plan: LaunchPlan) -> str:
    """One line for `plan` and the pipeline log: how training and forward-only stages run."""
    if plan.mode == "single":
        return "launch: one process for every stage"
    train = (f"{plan.world_size} processes, {'DeepSpeed ' + str(plan.deepspeed_file) if plan.mode == 'deepspeed' else 'DDP'}"
             f"; global batch {plan.global_batch} = {plan.micro_batch} × {plan.accumulation} accumulation × "
             f"{plan.world_size}")
    forward = [s for s in STAGES.values() if s.runs_model and s.launch != "training"]
    sharded = ", ".join(s.label for s in forward if s.launch == "data_parallel")
    single = ", ".join(s.label for s in forward if s.launch != "data_parallel" or plan.forward_processes == 1)
    if plan.forward_processes > 1 and sharded:
        fwd = f"{sharded} on {plan.forward_processes} data-parallel processes (rows sharded, gathered on rank 0)"
        fwd += f"; {single} as one process, by design" if single else ""
    else:
        fwd = f"{single} as one process on the launching node, by design"
    return f"launch: training stages {train}; {fwd}"
