"""Launch-mode helpers: what DDP, DeepSpeed ZeRO-3 and accelerate need from code that runs models.

- `unwrap`: the plain module inside DDP / DeepSpeed / accelerate wrappers.
- `gathered_for_loss`: ZeRO-3-partitioned parameters made whole for a read outside their module's forward.
- `call_as_forward`: run a function as a module's forward, through its wrapper (forward redirection).
- `release_process_group`: destroy this process's default process group once its stage is done.

Imports no DeepSpeed until a partitioned parameter is seen, so plain PyTorch pays nothing.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch


def unwrap(model):
    """The plain `PreTrainedModel` inside DDP / DeepSpeed / accelerate wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


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
