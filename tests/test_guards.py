"""Training guards: a non-finite loss or gradient stops the run naming the step, the batch and the last
checkpoint, or (`optim.nonfinite_loss: skip`) withholds that update, counts and logs it."""

import json
from types import SimpleNamespace

import pytest
import torch

from distillkit_scd.losses import TAIDState
from distillkit_scd.training.callbacks import NonFiniteLossError, StepLossCallback


class FakeTrainer:
    def __init__(self, losses):
        self.losses = list(losses)
        self.taid_state = TAIDState()
        self.last_batch_ids = torch.tensor([4, 9])
        self.last_step_distill = None  # TAID then reads the step's loss

    def pop_step_loss(self):
        return self.losses.pop(0)


def test_nan_loss_stops_with_step_batch_and_checkpoint(tmp_path):
    """NaN at step 3 raises, naming step 3, rows [4, 9] and the newest finished checkpoint."""
    done = tmp_path / "checkpoint-2"
    done.mkdir()
    (done / "trainer_state.json").write_text("{}")
    cb = StepLossCallback(FakeTrainer([2.0, 1.5, float("nan")]))
    args = SimpleNamespace(output_dir=str(tmp_path))
    for step in (1, 2):
        cb.on_step_end(args, SimpleNamespace(global_step=step, max_steps=10), None)
    with pytest.raises(NonFiniteLossError, match=r"step 3.*\[4, 9\].*checkpoint-2"):
        cb.on_step_end(args, SimpleNamespace(global_step=3, max_steps=10), None)


def test_taid_advances_once_per_step_from_the_step_distillation_term():
    """The callback feeds TAID once per optimizer step with the step's distillation term (not the CE mix),
    and the floor's progress counts the steps finished before it (the official rule: Lightning's
    global_step read during the step). Reference: the official update in plain floats."""
    import math

    trainer = FakeTrainer([3.0, 2.5, 2.4, 2.0])
    terms = iter([1.0, 0.5, 0.45, 0.2])
    pop = trainer.pop_step_loss

    def pop_with_term():
        trainer.last_step_distill = next(terms)
        return pop()

    trainer.pop_step_loss = pop_with_term
    cb = StepLossCallback(trainer)
    args = SimpleNamespace(output_dir="/nonexistent")
    for step in (1, 2, 3, 4):
        cb.on_step_end(args, SimpleNamespace(global_step=step, max_steps=4), None)

    t, m, prev = 0.4, 0.0, None  # t_start, momentum; alpha 5e-4, beta 0.99, t_end 1.0 (defaults)
    for finished, term in enumerate([1.0, 0.5, 0.45, 0.2]):
        if prev is None:
            prev = term
            continue
        m = 0.99 * m + 0.01 * (prev - term) / (prev + 1e-15)
        delta = 5e-4 / (1 + math.exp(-m)) * (1 - t)
        t = min(1.0, max(0.4 + 0.6 * finished / 4, t + delta))
        prev = term
    assert trainer.taid_state.prev_loss == 0.2 and trainer.losses == []
    assert trainer.taid_state.t == pytest.approx(t, abs=1e-12)
    assert t == pytest.approx(0.4 + 0.6 * 3 / 4, abs=1e-3)  # the floor at 3 of 4 finished steps dominates


def test_resumed_run_continues_the_skip_count():
    """The count of skipped steps is read back from the restored log history (trainer_state.json)."""
    cb = StepLossCallback(FakeTrainer([]), "skip", 5)
    state = SimpleNamespace(log_history=[{"loss": 1.0, "step": 2}, {"step": 3, "nonfinite_skipped": 1},
                                         {"step": 7, "nonfinite_skipped": 2}])
    cb.on_train_begin(None, state, None)
    assert cb.skipped == 2


def test_skip_is_refused_when_the_trainer_runs_deepspeed():
    """DeepSpeed enabled by an accelerate config (not visible in the recipe): refused at train begin."""
    trainer = FakeTrainer([])
    trainer.is_deepspeed_enabled = True
    with pytest.raises(ValueError, match=r"optim\.nonfinite_loss: 'skip' .*DeepSpeed"):
        StepLossCallback(trainer, "skip").on_train_begin(None, SimpleNamespace(log_history=[]), None)
    StepLossCallback(trainer, "stop").on_train_begin(None, SimpleNamespace(log_history=[]), None)


@pytest.mark.parametrize(("overrides", "field"), [
    ({"optim": {"nonfinite_loss": "ignore"}}, "optim.nonfinite_loss"),
    ({"optim": {"max_nonfinite_steps": -1}}, "optim.max_nonfinite_steps"),
    ({"optim": {"nonfinite_loss": "skip"}, "launcher": {"deepspeed_config": "ds.json"}}, "optim.nonfinite_loss"),
    ({"optim": {"nonfinite_loss": "skip"}, "training_args": {"deepspeed": "ds.json"}}, "optim.nonfinite_loss"),
])
def test_nonfinite_settings_are_validated(tmp_path, overrides, field):
    """A bad value, or `skip` under DeepSpeed (which steps inside backward), is refused naming the field."""
    from distillkit_scd.config import RecipeError, recipe_from_dict

    with pytest.raises(RecipeError, match=field.replace(".", r"\.")):
        recipe_from_dict(_recipe_dict(tmp_path, **overrides))


# -- real training runs (student SFT on `synthetic`, tiny model, in-process) ---------------------------

BAD_STEP = 3  # the optimizer step whose loss (or gradient) is made NaN


def _recipe_dict(tmp_path, optim=None, **sections):
    return {
        "name": "guards", "output_dir": str(tmp_path / "run"), "seed": 5,
        "models": {"teacher": "tiny:teacher", "student": "tiny:student"},
        "task": {"name": "synthetic", "max_length": 64, "options": {"num_train": 48, "num_test": 8}},
        "optim": {"per_device_train_batch_size": 8, "learning_rate": 3e-3, "logging_steps": 1, **(optim or {})},
        "sft": {"num_checkpoints": 1, "student": {"num_train_epochs": 1}},
        **sections,
    }


def _train_student(tmp_path, monkeypatch, optim=None, bad_steps=(), bad="loss"):
    """Run the student SFT stage with a NaN injected at `bad_steps` (1-based optimizer steps) into the
    loss (`bad="loss"`) or only into one gradient (`bad="grad"`: the loss stays finite). Returns the
    weights, AdamW state and learning rate recorded at every step end, keyed by step."""
    from distillkit_scd.config import recipe_from_dict
    from distillkit_scd.training import callbacks, trainer
    from distillkit_scd.training.sft import run_sft
    from distillkit_scd.training.trainer import DistillationTrainer

    compute_loss, loss_fn = DistillationTrainer.compute_loss, trainer.chunked_compound_loss
    hooks, now = [], {"bad": False}

    def nan_loss(*args, **kwargs):  # what compute_loss computes: the step loss and the gradient are NaN
        loss, parts = loss_fn(*args, **kwargs)
        return (loss * float("nan"), parts) if now["bad"] and bad == "loss" else (loss, parts)

    def poisoned(self, model, inputs, *args, **kwargs):
        while hooks:
            hooks.pop().remove()
        now["bad"] = self.model.training and self.state.global_step + 1 in bad_steps
        if now["bad"] and bad == "grad":  # the loss stays finite; one gradient turns NaN in backward
            hooks.append(self.model.get_output_embeddings().weight.register_hook(lambda g: g * float("nan")))
        return compute_loss(self, model, inputs, *args, **kwargs)

    seen = {}
    on_step_end = callbacks.StepLossCallback.on_step_end

    def record(self, args, state, control, **kwargs):
        out = on_step_end(self, args, state, control, **kwargs)
        t = self.trainer
        adam = {f"{n}.{k}": v.clone() for n, p in t.model.named_parameters()
                for k, v in t.optimizer.state.get(p, {}).items()}
        seen[state.global_step] = ({n: p.detach().clone() for n, p in t.model.named_parameters()}, adam,
                                   t.lr_scheduler.get_last_lr()[0])
        return out

    monkeypatch.setattr(DistillationTrainer, "compute_loss", poisoned)
    monkeypatch.setattr(trainer, "chunked_compound_loss", nan_loss)
    monkeypatch.setattr(callbacks.StepLossCallback, "on_step_end", record)
    out = run_sft(recipe_from_dict(_recipe_dict(tmp_path, optim)), "student")
    return out, seen


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_skip_mode_withholds_the_update_and_counts_it(tmp_path, monkeypatch, caplog):
    """`skip`: the NaN step changes neither the weights nor AdamW's state, the LR schedule advances as in
    a clean run, the skip is logged with its step and rows and counted in log_history (saved with the
    checkpoint), training completes, and every step before it equals the clean run bitwise."""
    clean_out, clean = _train_student(tmp_path / "clean", monkeypatch)
    monkeypatch.undo()
    with caplog.at_level("WARNING", logger="distillkit_scd.training.callbacks"):
        out, seen = _train_student(tmp_path / "nan", monkeypatch, {"nonfinite_loss": "skip"}, bad_steps=(BAD_STEP,))
    steps = sorted(seen)
    assert steps == sorted(clean) and len(steps) > BAD_STEP + 1
    weights, adam, _ = seen[BAD_STEP]
    before_w, before_adam, _ = seen[BAD_STEP - 1]
    assert _same(weights, before_w) and _same(adam, before_adam)  # a true skip: nothing moved
    assert not _same(seen[BAD_STEP + 1][0], weights)  # and training went on
    for step in range(1, BAD_STEP):
        assert _same(seen[step][0], clean[step][0])
    assert [seen[s][2] for s in steps] == [clean[s][2] for s in steps]  # LR schedule unaffected
    assert all(torch.isfinite(w).all() for w in seen[steps[-1]][0].values())

    assert (out / "manifest.json").is_file()
    final = json.loads((sorted(out.glob("checkpoint-*"))[-1] / "trainer_state.json").read_text())
    skips = [e for e in final["log_history"] if "nonfinite_skipped" in e]
    assert len(skips) == 1 and skips[0]["step"] == BAD_STEP and skips[0]["nonfinite_skipped"] == 1
    assert len(skips[0]["sample_index"]) == 8 and skips[0]["nonfinite_loss"] == "nan"
    assert any(f"skipped optimizer step {BAD_STEP}" in r.getMessage() and "1 skipped so far" in r.getMessage()
               for r in caplog.records)


@pytest.mark.slow
def test_skip_mode_stops_once_the_limit_is_exceeded(tmp_path, monkeypatch):
    """Two NaN steps with `max_nonfinite_steps: 1`: the second raises, naming the count and the limit."""
    with pytest.raises(NonFiniteLossError, match=r"2 optimizer steps .*max_nonfinite_steps=1.*step 4"):
        _train_student(tmp_path, monkeypatch, {"nonfinite_loss": "skip", "max_nonfinite_steps": 1},
                       bad_steps=(BAD_STEP, BAD_STEP + 1))


@pytest.mark.slow
def test_nonfinite_gradient_with_finite_loss_stops_before_the_update(tmp_path, monkeypatch):
    """Default `stop`: a NaN gradient (finite loss) raises before the optimizer step, naming it."""
    with pytest.raises(NonFiniteLossError, match=rf"non-finite gradients \(loss [0-9.]+\) at optimizer step {BAD_STEP}"):
        _train_student(tmp_path, monkeypatch, bad_steps=(BAD_STEP,), bad="grad")
