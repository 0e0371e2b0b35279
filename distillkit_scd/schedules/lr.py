"""The learning-rate schedule of a distillation run: transformers' schedulers, over the run or per stage.

The paper says "optimizer reset every T steps" and "cosine decay with warmup (ratio=0.1)" — nothing
about restarting the schedule. `distill.lr_schedule`:

- `global` (default; the literal reading): one schedule over the whole N×T run — transformers' own
  scheduler over `max_steps`; AdamW's moments are still cleared every T steps (`reset_optimizer`).
- `per_stage` (ours): the same schedule over T steps, restarted at every stage boundary:
  lr(step) = lr₀ · f_T(step mod T), with f_T the multiplier of `get_scheduler(name, T, warm-up)`.

Either way the scheduler is transformers' `get_scheduler(optim.lr_scheduler_type, …)`, so every name
whose multiplier is a pure function of the step works (linear, cosine, cosine_with_restarts,
polynomial, constant, constant_with_warmup, inverse_sqrt, cosine_with_min_lr, …, with
`training_args.lr_scheduler_kwargs` where the scheduler needs them); others (reduce_lr_on_plateau) are
refused when the recipe is checked.
"""

from __future__ import annotations

from collections.abc import Callable


def schedule_multiplier(name: str, num_training_steps: int, num_warmup_steps: int,
                        scheduler_kwargs: dict | None = None) -> Callable[[int], float]:
    """transformers' LR multiplier of scheduler `name` as a pure function of the step.

    Raises:
        ValueError: an unknown name, missing scheduler arguments, or a scheduler that is not a function of
            the step (e.g. reduce_lr_on_plateau), naming `optim.lr_scheduler_type`.
    """
    import torch
    from transformers import get_scheduler

    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    try:
        scheduler = get_scheduler(name, dummy, num_warmup_steps=num_warmup_steps,
                                  num_training_steps=num_training_steps,
                                  scheduler_specific_kwargs=dict(scheduler_kwargs or {}))
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"optim.lr_scheduler_type: {name!r} cannot be built by transformers' get_scheduler "
                         f"({err}); use a scheduler name of transformers.SchedulerType and, where it needs "
                         "arguments, training_args.lr_scheduler_kwargs") from None
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR) or not lambdas or len(lambdas) != 1:
        raise ValueError(f"optim.lr_scheduler_type: {name!r} is not a function of the step (got "
                         f"{type(scheduler).__name__}); distillation schedules need one, e.g. cosine or linear")
    return lambdas[0]


def staged_lr_lambda(name: str, steps_per_stage: int, num_warmup_steps: int,
                     scheduler_kwargs: dict | None = None) -> Callable[[int], float]:
    """`per_stage`: the multiplier of `name` over T = `steps_per_stage` steps, restarted every T steps."""
    if steps_per_stage < 1:
        raise ValueError(f"steps_per_stage: expected an integer >= 1, got {steps_per_stage!r}")
    inner = schedule_multiplier(name, steps_per_stage, num_warmup_steps, scheduler_kwargs)

    def fn(step: int) -> float:
        return inner(step % steps_per_stage)

    return fn


def check_scheduler(name: str, scheduler_kwargs: dict | None = None) -> None:
    """Raise ValueError (naming the field) unless `name` builds a step-function scheduler."""
    schedule_multiplier(name, 100, 10, scheduler_kwargs)
