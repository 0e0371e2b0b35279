"""TAIDState follows the official adaptive rule step by step, and survives a save/restore.

Reference: a hand-rolled loop of SakanaAI/TAID `src/distil_losses/taid.py` `TAID.update_t` in plain floats.
"""

import math

import pytest

from distillkit_scd.losses import TAIDState


def official_trajectory(losses, steps, total, t_start=0.4, t_end=1.0, alpha=5e-4, beta=0.99):
    """t after each update, as the official code: prev_loss starts at +inf, the first call only records."""
    t, m, prev, out = t_start, 0.0, math.inf, []
    for step, loss in zip(steps, losses):
        if math.isinf(prev):
            prev = loss
            out.append(t)
            continue
        rel = (prev - loss) / (prev + 1e-15)
        m = beta * m + (1 - beta) * rel
        target = t_start + (t_end - t_start) * (step / total)
        t = min(t_end, max(target, t + alpha * (1 / (1 + math.exp(-m))) * (1 - t)))
        prev = loss
        out.append(t)
    return out


LOSSES = [3.0 / (1 + 0.1 * i) for i in range(40)] + [1.0] * 10 + [1.0 + 0.05 * i for i in range(10)]


@pytest.mark.parametrize("alpha", [0.0, 5e-4, 0.05, 1.0])
@pytest.mark.parametrize("first_step", [0, 1])
def test_trajectory_matches_official_rule(alpha, first_step):
    """t after every optimizer step equals the official loop (falling, flat and rising losses), for
    0-based (official global_step) and 1-based step counting."""
    steps = list(range(first_step, first_step + len(LOSSES)))
    state = TAIDState(alpha=alpha)
    got = [state.update(loss, step, len(LOSSES)) for step, loss in zip(steps, LOSSES)]
    want = official_trajectory(LOSSES, steps, len(LOSSES), alpha=alpha)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert all(b >= a for a, b in zip(got, got[1:]))  # t never decreases


def test_first_update_only_records_and_t_is_clamped():
    """The first update leaves t at t_start and m at 0; t never exceeds t_end and reaches it at the end."""
    state = TAIDState(t_start=0.4, t_end=0.9)
    assert state.update(5.0, 1, 10) == 0.4 and state.prev_loss == 5.0 and state.momentum == 0.0
    for step in range(2, 11):
        assert state.update(5.0 - step * 0.1, step, 10) <= 0.9
    assert state.t == pytest.approx(0.9)
    big = TAIDState(alpha=1.0)
    big.update(2.0, 0, 1000)
    for step in range(1, 200):
        assert big.update(2.0 / (step + 1), step, 1000) <= 1.0
    assert big.t == pytest.approx(1.0, abs=1e-12)


def test_linear_floor_when_adaptive_step_is_small():
    """With a tiny α, t follows the linear floor t_start + (t_end − t_start)·step/total exactly."""
    state = TAIDState(alpha=1e-12)
    state.update(1.0, 0, 100)
    assert state.update(2.0, 50, 100) == pytest.approx(0.4 + 0.6 * 0.5, abs=1e-10)
    zero = TAIDState(t_start=0.2, t_end=0.8, alpha=0.0)
    zero.update(1.0, 0, 8)
    assert [zero.update(1.0 / s, s, 8) for s in range(1, 9)] == pytest.approx([0.2 + 0.6 * s / 8 for s in range(1, 9)])


def test_adaptive_step_by_hand():
    """One update by hand: L 2 → 1 gives rel 0.5, m = 0.005, Δt = α·σ(0.005)·(1 − 0.4)."""
    state = TAIDState(alpha=0.1)
    state.update(2.0, 0, 10**9)
    t = state.update(1.0, 1, 10**9)
    assert state.momentum == pytest.approx(0.01 * 0.5)
    assert t == pytest.approx(0.4 + 0.1 * (1 / (1 + math.exp(-0.005))) * 0.6)


def test_state_round_trip_mid_run():
    """state_dict/load_state_dict restore t, momentum and previous loss: a restored run continues identically."""
    a = TAIDState(alpha=0.05)
    for step, loss in enumerate([3.0, 2.5, 2.0], start=1):
        a.update(loss, step, 10)
    b = TAIDState(alpha=0.05)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    for step, loss in enumerate([1.5, 1.7, 1.2], start=4):
        assert b.update(loss, step, 10) == a.update(loss, step, 10)
    with pytest.raises(ValueError, match="unknown keys.*'tt'"):
        b.load_state_dict({"tt": 0.5})


@pytest.mark.parametrize("kwargs, field", [
    ({"t_start": 0.9, "t_end": 0.5}, "t_end"), ({"t_start": 1.0}, "t_start"), ({"t_start": -0.1}, "t_start"),
    ({"t_end": 1.1}, "t_end"), ({"alpha": -1e-3}, "alpha"), ({"alpha": 2.0}, "alpha"),
    ({"beta": 1.0}, "beta"), ({"beta": -0.5}, "beta"),
])
def test_invalid_parameters_raise(kwargs, field):
    """Out-of-range settings fail with the parameter named (ranges of the official code)."""
    with pytest.raises(ValueError, match=f"TAIDState.{field}"):
        TAIDState(**kwargs)


def test_invalid_updates_raise():
    """A non-finite loss, a negative step or total_steps < 1 raise instead of corrupting the state."""
    state = TAIDState()
    with pytest.raises(ValueError, match="finite"):
        state.update(float("nan"), 1, 10)
    with pytest.raises(ValueError, match="total_steps"):
        state.update(1.0, 1, 0)
    with pytest.raises(ValueError, match="step=-1"):
        state.update(1.0, -1, 10)
    assert state.prev_loss is None and state.t == 0.4


def test_trainer_adapts_t_from_each_steps_distillation_term(tmp_path, tiny_pair, tiny_tokenizer):
    """A real TAID run (tiny models, 6 steps, 2 micro-batches per step): the logged t after every step
    equals the official rule applied to the per-step distillation terms (token means over the step's
    micro-batches, as logged), with progress = steps finished before the step.

    The terms are tiny (near-uniform tiny models: ~0.004), so the 6-decimal logged values move t by up to
    ~4e-5 through the relative change: the rule is applied to the terms TAID was fed, and each of those is
    checked against the logged one to the log's rounding."""
    import json

    from trl import SFTConfig

    from distillkit_scd.data.collate import DistillationCollator
    from distillkit_scd.data.formatting import tokenize_dataset
    from distillkit_scd.losses import LossSpec
    from distillkit_scd.models.loading import load_model
    from distillkit_scd.tasks import load_task
    from distillkit_scd.training.callbacks import StepLossCallback
    from distillkit_scd.training.trainer import DistillationTrainer

    rows, _ = tokenize_dataset(load_task("synthetic", num_train=48, num_test=4, seed=1)["train"], tiny_tokenizer, 64)
    args = SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, max_steps=6, logging_steps=1,
                     per_device_train_batch_size=4, gradient_accumulation_steps=2, learning_rate=1e-2,
                     remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True},
                     save_strategy="no", seed=0)
    # alpha 1, beta 0: Δt = σ(last relative change)·(1 − t) outruns the floor, so t depends on the terms fed
    state = TAIDState(alpha=1.0, beta=0.0)
    trainer = DistillationTrainer(
        model=load_model(str(tiny_pair[1])), args=args, train_dataset=rows, processing_class=tiny_tokenizer,
        data_collator=DistillationCollator(tiny_tokenizer.pad_token_id), teacher_model=load_model(str(tiny_pair[0])),
        loss_spec=LossSpec(divergence="taid", alpha=0.5), taid_state=state)
    trainer.add_callback(StepLossCallback(trainer))
    fed = []
    real_update = state.update
    state.update = lambda loss, step, total: fed.append(loss) or real_update(loss, step, total)
    trainer.train()
    logs = [e for e in trainer.state.log_history if "taid_t" in e]
    assert [e["step"] for e in logs] == [1, 2, 3, 4, 5, 6]
    assert fed == pytest.approx([e["loss_distill"] for e in logs], abs=5.1e-7), json.dumps(logs)  # the log rounds
    ref = official_trajectory(fed, steps=range(6), total=6, alpha=1.0, beta=0.0)
    assert [e["taid_t"] for e in logs] == pytest.approx(ref, abs=5.1e-7), json.dumps(logs)
    assert any(e["loss_distill"] != pytest.approx(e["loss"], rel=1e-3) for e in logs)  # not the total loss


def test_one_rule_for_taid_settings():
    """TAIDState, the recipe's distill.taid and the DistillKit section's taid share one range check
    (`taid_state.check_taid`): α = 0 (only the linear floor) is valid everywhere, α > 1 refused everywhere,
    each message naming its own field path (a section checks itself when built, `TAIDConfig.__post_init__`);
    `TAIDState.from_config` takes only the state's settings."""
    from distillkit_scd.config import RecipeError, TAIDConfig, recipe_from_dict
    from distillkit_scd.integrations import distillkit as dk_int

    base = {"name": "t", "output_dir": "/tmp/unused", "models": {"teacher": "tiny:teacher", "student": "tiny:student"},
            "task": {"name": "synthetic"}}
    recipe = recipe_from_dict({**base, "distill": {"taid": {"alpha": 0.0, "ce_weight": 0.0}}})
    state = TAIDState.from_config(recipe.distill.taid)
    assert (state.alpha, state.t) == (0.0, 0.4) and dk_int.parse_settings({"taid": {"alpha": 0.0}}).taid.alpha == 0
    with pytest.raises(RecipeError, match=r"<recipe>: distill\.taid\.alpha: expected a number in \[0, 1\]"):
        recipe_from_dict({**base, "distill": {"taid": {"alpha": 1.5}}})
    with pytest.raises(RecipeError, match=r"distillkit_scd\.taid\.alpha: expected a number in \[0, 1\]"):
        dk_int.parse_settings({"taid": {"alpha": 1.5}})
    with pytest.raises(ValueError, match=r"^TAIDState\.alpha: expected a number in \[0, 1\]"):
        TAIDState(alpha=1.5)
    with pytest.raises(ValueError, match=r"^alpha: expected a number in \[0, 1\]"):  # checked at the field
        TAIDConfig(alpha=1.5)
