"""Launch-mode helpers: what DDP, DeepSpeed ZeRO-3 and accelerate need from code that runs models.

- `unwrap`: the plain module inside DDP / DeepSpeed / FSDP wrappers (accelerate's `extract_model_from_parallel`).
- `place_teacher`: a frozen teacher inside its own DeepSpeed engine under DeepSpeed, else on the device.
- `register_external_params`: ZeRO-3 parameters a module's forward reads outside their own module's forward.
- `gathered_for_loss`: ZeRO-3-partitioned parameters made whole for a read outside their module's forward.
- `call_as_forward`: run a function as a module's forward, through its wrapper (forward redirection).
- `release_process_group`: destroy this process's default process group once its stage is done.

Imports no DeepSpeed until a wrapper or a partitioned parameter is seen, so plain PyTorch pays nothing.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch


def unwrap(model):
    """The plain `PreTrainedModel` inside DDP / DeepSpeed / FSDP wrappers (accelerate's
    `extract_model_from_parallel`; accelerate's mixed-precision forward and a torch.compile wrapper are kept).

    A module with no wrapped `.module` is returned as is before accelerate runs: accelerate checks for a
    DeepSpeed engine by importing DeepSpeed (about a second, and a log line) in processes that never use it.
    """
    if not isinstance(getattr(model, "module", None), torch.nn.Module):
        return model
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def place_teacher(teacher, accelerator, deepspeed: bool):
    """A frozen teacher placed like the student: under DeepSpeed inside its own engine (TRL's
    `prepare_deepspeed`; a teacher loaded after a ZeRO-3 config exists is partitioned and unusable raw), on
    the accelerator's device otherwise. Returns what to call (the engine or the module)."""
    if deepspeed:
        from trl.models.utils import prepare_deepspeed

        return prepare_deepspeed(unwrap(teacher), accelerator)
    return teacher.to(accelerator.device)


def register_external_params(module, *params) -> None:
    """ZeRO-3: make `params` (read by `module`'s forward outside their own module's forward, e.g. an lm_head
    weight the loss multiplies) external parameters of `module`, so its engine gathers them around
    `module`'s forward and again for its backward. Idempotent; parameters that are not partitioned, or
    None, are left alone (nothing to do, and no DeepSpeed import)."""
    todo = [p for p in params if p is not None and hasattr(p, "ds_id")]
    if todo:
        import deepspeed

        for param in todo:
            deepspeed.zero.register_external_parameter(module, param)


def gathered_for_loss(*params):
    """A context in which ZeRO-3-partitioned parameters are whole (all-gathered, read-only).

    Parameters that are not partitioned, already available (e.g. a tied embedding inside its module's
    forward) or None are left alone; with nothing to gather this is a null context, so plain PyTorch, DDP
    and ZeRO-1/2 pay nothing. Duplicates (tied weights passed twice) are gathered once.
    """
    todo = {id(p): p for p in params if p is not None and hasattr(p, "ds_id")}
    if not todo:
        return nullcontext()
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    todo = [p for p in todo.values() if p.ds_status != ZeroParamStatus.AVAILABLE]
    return deepspeed.zero.GatheredParameters(todo, modifier_rank=None) if todo else nullcontext()


def call_as_forward(wrapper, module, fn, *args, **kwargs):
    """Run `fn(*args, **kwargs)` as `module`'s forward, called through `wrapper` (DDP, a DeepSpeed engine,
    or `module` itself), and return its result.

    Work done inside a wrapper's forward gets the wrapper's bookkeeping: DDP prepares the gradient
    reduction of the outputs; a ZeRO-3 engine gathers the root module's (and its external) parameters for
    the forward and, through hooks on the outputs, again for their backward. Same idea as Lightning's and
    TRL's forward redirection. `module.forward` is restored before `fn` runs (fn may call it) and after.
    """
    own = "forward" in vars(module)  # an instance attribute (e.g. accelerate's autocast wrapper) or the class's
    original = module.forward

    def restore() -> None:
        if own:
            module.forward = original
        else:
            vars(module).pop("forward", None)

    def forward(*inner_args, **inner_kwargs):
        restore()
        return fn(*inner_args, **inner_kwargs)

    module.forward = forward
    try:
        return wrapper(*args, **kwargs)
    finally:
        restore()


def release_process_group() -> None:
    """Destroy the default process group if this process joined one (a stage under `accelerate launch`).

    Left to the interpreter's teardown, a gloo group's threads can abort a process whose work is already
    done (`terminate called without an active exception`, SIGABRT), failing the launch. Local: no
    collective, so it cannot wait on another rank.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
