"""Training-stage invariants: N evenly spaced teacher checkpoints with a manifest and p(best), the LR
schedule (global or per stage) as a pure function of the step, and the optimizer reset being a fresh AdamW."""

import json
import math

import pytest
import torch

from distillkit_scd.schedules.lr import staged_lr_lambda
from distillkit_scd.training.sft import evenly_spaced_steps
from distillkit_scd.training.trainer_base import reset_optimizer_state


def test_evenly_spaced_steps_hand_worked():
    """round(j·S/N), j = 1..N: the last checkpoint is the final step."""
    assert evenly_spaced_steps(12, 3) == [4, 8, 12]
    assert evenly_spaced_steps(10, 4) == [2, 5, 8, 10]
    assert evenly_spaced_steps(5, 5) == [1, 2, 3, 4, 5]


def _cosine(step: int, total: int, warmup: int) -> float:
    """Hand-written warm-up + cosine multiplier (transformers' convention: step/warmup, then half a cosine)."""
    if step < warmup:
        return step / warmup
    return max(0.0, 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))))


def test_per_stage_lr_restarts_every_stage():
    """per_stage: warm-up then cosine over T = 10 (warm-up 2), identical in every stage, equal to the hand
    formula; another transformers scheduler (linear) works the same way."""
    fn = staged_lr_lambda("cosine", 10, 2)
    first = [fn(s) for s in range(10)]
    assert [fn(s) for s in range(10, 20)] == first
    assert first == pytest.approx([_cosine(s, 10, 2) for s in range(10)], abs=1e-12)
    linear = staged_lr_lambda("linear", 10, 2)
    assert [linear(s) for s in (0, 1, 2, 6, 11, 16)] == pytest.approx([0, 0.5, 1.0, 0.5, 0.5, 0.5])


def _trainer_lr(tmp_path, tiny_pair, tiny_tokenizer, lr_schedule: str, scheduler: str = "cosine"):
    """LR multipliers of a distillation trainer over N×T = 3×4 steps, as `training/distill.py` configures it."""
    from distillkit_scd.config import recipe_from_dict
    from distillkit_scd.data.collate import DistillationCollator
    from distillkit_scd.models.loading import load_model
    from distillkit_scd.training.trainer import DistillationTrainer
    from distillkit_scd.training.training_args import build_sft_config

    recipe = recipe_from_dict({
        "name": "lr", "output_dir": str(tmp_path), "models": {"teacher": "tiny:teacher", "student": "tiny:student"},
        "task": {"name": "synthetic"}, "optim": {"lr_scheduler_type": scheduler, "warmup_ratio": 0.1},
        "distill": {"lr_schedule": lr_schedule}})
    args = build_sft_config(recipe, tmp_path / lr_schedule, 1.0, max_steps=12, prediction_loss_only=True)
    from datasets import Dataset

    rows = Dataset.from_list([{"input_ids": [1, 2], "labels": [1, 2]}])
    trainer = DistillationTrainer(model=load_model(str(tiny_pair[1])), args=args, train_dataset=rows,
                                  processing_class=tiny_tokenizer, data_collator=DistillationCollator(0),
                                  steps_per_stage=4 if recipe.distill.lr_schedule == "per_stage" else None)
    trainer.create_optimizer_and_scheduler(num_training_steps=12)
    fn = trainer.lr_scheduler.lr_lambdas[0]  # one per parameter group (decay / no decay), all alike
    return [fn(s) for s in range(12)]


def test_global_lr_is_one_cosine_over_the_whole_run(tmp_path, tiny_pair, tiny_tokenizer):
    """distill.lr_schedule global (default): one warm-up (⌈0.1·12⌉ = 2 steps) + cosine over all N×T = 12
    steps, computed by hand; per_stage: the same shape over T = 4 (warm-up ⌈0.4⌉ = 1), three times."""
    got = _trainer_lr(tmp_path, tiny_pair, tiny_tokenizer, "global")
    assert got == pytest.approx([_cosine(s, 12, 2) for s in range(12)], abs=1e-12)
    staged = _trainer_lr(tmp_path, tiny_pair, tiny_tokenizer, "per_stage")
    assert staged == pytest.approx([_cosine(s % 4, 4, 1) for s in range(12)], abs=1e-12)
    poly = _trainer_lr(tmp_path, tiny_pair, tiny_tokenizer, "per_stage", "polynomial")  # any step-function name
    assert poly[:4] == poly[4:8] and poly[1] == pytest.approx(1.0)


def test_lr_scheduler_refused_at_load_unless_a_function_of_the_step():
    """A scheduler that is not a function of the step, or lacks its arguments, is a recipe error naming
    optim.lr_scheduler_type (today's fallback silently used cosine)."""
    from distillkit_scd.config import RecipeError, recipe_from_dict

    base = {"name": "x", "output_dir": "x", "models": {"teacher": "tiny:teacher", "student": "tiny:student"},
            "task": {"name": "synthetic"}}
    for name in ("reduce_lr_on_plateau", "cosine_with_min_lr", "cosinus"):
        with pytest.raises(RecipeError, match="optim.lr_scheduler_type"):
            recipe_from_dict({**base, "optim": {"lr_scheduler_type": name}})
    recipe_from_dict({**base, "optim": {"lr_scheduler_type": "cosine_with_min_lr"},
                      "training_args": {"lr_scheduler_kwargs": {"min_lr_rate": 0.1}}})


def test_reset_optimizer_state_equals_fresh_adamw():
    """After a reset, the next AdamW step equals the first step of a newly built AdamW."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5))
    opt = torch.optim.AdamW([w], lr=0.1, betas=(0.9, 0.95))
    for _ in range(3):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    start = w.detach().clone()
    reset_optimizer_state(opt)
    opt.zero_grad()
    (w**2).sum().backward()
    opt.step()
    w2 = torch.nn.Parameter(start.clone())
    fresh = torch.optim.AdamW([w2], lr=0.1, betas=(0.9, 0.95))
    (w2**2).sum().backward()
    fresh.step()
    torch.testing.assert_close(w.detach(), w2.detach())


@pytest.mark.slow
def test_teacher_sft_saves_n_checkpoints_with_manifest(tmp_path):
    """The teacher SFT stage saves N checkpoints at round(j·S/N) with validation losses and p(best)."""
    from distillkit_scd.config import recipe_from_dict
    from distillkit_scd.training.sft import run_sft

    recipe = recipe_from_dict({
        "name": "n", "output_dir": str(tmp_path / "run"), "seed": 3,
        "models": {"teacher": "tiny:teacher", "student": "tiny:student"},
        "task": {"name": "synthetic", "max_length": 64, "options": {"num_train": 80, "num_test": 8}},
        "optim": {"per_device_train_batch_size": 8, "learning_rate": 1e-3},
        "sft": {"num_checkpoints": 3, "teacher": {"num_train_epochs": 1}},
    })
    out = run_sft(recipe, "teacher")
    manifest = json.loads((out / "manifest.json").read_text())
    steps = [c["step"] for c in manifest["checkpoints"]]
    total = -(-72 // 8)  # 72 train rows after the 10 % validation carve, batch 8
    assert steps == evenly_spaced_steps(total, 3)
    assert all(isinstance(c["val_loss"], float) for c in manifest["checkpoints"])
    assert all(isinstance(c["val_score"], float) for c in manifest["checkpoints"])
    scores = [c["val_score"] for c in manifest["checkpoints"]]
    assert manifest["best_index"] == scores.index(max(scores))  # p(best) by task score, ties to the earlier
    assert "val_score" in manifest["selected_by"]
    for c in manifest["checkpoints"]:
        assert (out / c["path"] / "model.safetensors").is_file()  # absolute paths stay absolute under `/`


def _fake_checkpoints(root, steps):
    for step in steps:
        (root / f"checkpoint-{step}").mkdir(parents=True)


def test_manifest_p_best_by_score_wins_over_loss(tmp_path):
    """When loss and task score disagree, p(best) is the best *score* (the paper's "best performance");
    `val_loss` and `val_score` are both recorded for every checkpoint; ties go to the earlier one."""
    from distillkit_scd.training.sft import write_checkpoint_manifest

    _fake_checkpoints(tmp_path, (2, 4, 6))
    losses = {2: 0.9, 4: 0.5, 6: 0.3}  # loss keeps falling: loss alone would pick checkpoint 3
    write_checkpoint_manifest(tmp_path, [2, 4, 6], 2, losses, scores=[0.4, 0.7, 0.6], split="test")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["best_index"] == 1
    assert [c["val_loss"] for c in manifest["checkpoints"]] == [0.9, 0.5, 0.3]
    assert [c["val_score"] for c in manifest["checkpoints"]] == [0.4, 0.7, 0.6]
    assert "test split" in manifest["selected_by"]
    write_checkpoint_manifest(tmp_path, [2, 4, 6], 2, losses, scores=[0.5, 0.7, 0.7])
    assert json.loads((tmp_path / "manifest.json").read_text())["best_index"] == 1  # tie: the earlier
    write_checkpoint_manifest(tmp_path, [2, 4, 6], 2, {2: 0.3, 4: 0.3, 6: 0.5})  # val_loss: lowest, earlier
    assert json.loads((tmp_path / "manifest.json").read_text())["best_index"] == 0


def test_best_index_rule():
    """Highest (or lowest) value, ties to the earliest; a missing or NaN value is refused, not skipped."""
    from distillkit_scd.evaluation.selection import best_index

    assert best_index([0.2, 0.5, 0.5, 0.1]) == 1
    assert best_index([0.2, 0.1, 0.1], higher_is_better=False) == 1
    for bad in ([0.1, None], [float("nan")], []):
        with pytest.raises(ValueError, match="best_index"):
            best_index(bad)


def test_eval_loss_is_the_token_mean_whatever_the_batching(tmp_path, tiny_pair, tiny_tokenizer):
    """`eval_loss` (it picks p(best)) is the CE token mean over the whole split — equal for eval batch sizes
    1, 3 and 8 and to a float64 loop over rows — not transformers' row-weighted mean of batch means."""
    import torch.nn.functional as F
    from trl import SFTConfig

    from distillkit_scd.data.collate import DistillationCollator
    from distillkit_scd.data.formatting import tokenize_dataset
    from distillkit_scd.models.loading import load_model
    from distillkit_scd.tasks import load_task
    from distillkit_scd.training.trainer import DistillationTrainer

    rows, _ = tokenize_dataset(load_task("synthetic", num_train=12, num_test=4, seed=5)["train"], tiny_tokenizer, 64)
    model = load_model(str(tiny_pair[1]))
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0, :-1].double()
            labels = torch.tensor(row["labels"][1:])
            keep = labels != -100
            total += F.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
            count += int(keep.sum())
    want = total / count
    got = []
    for batch in (1, 3, 8):
        args = SFTConfig(output_dir=str(tmp_path / str(batch)), report_to="none", use_cpu=True, bf16=False,
                         per_device_eval_batch_size=batch, remove_unused_columns=False,
                         dataset_kwargs={"skip_prepare_dataset": True})
        trainer = DistillationTrainer(model=model, args=args, train_dataset=rows, eval_dataset=rows,
                                      processing_class=tiny_tokenizer,
                                      data_collator=DistillationCollator(tiny_tokenizer.pad_token_id))
        got.append(trainer.evaluate()["eval_loss"])
    assert got == pytest.approx([got[0]] * 3, rel=1e-6)  # the batching does not matter
    assert got[0] == pytest.approx(want, rel=3e-5)  # float32 model vs float64 sums (transformers 4.57: 1.1e-5)
