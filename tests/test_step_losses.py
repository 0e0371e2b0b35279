"""Step-loss sums and training log fields: one implementation (`StepLossSums` in the trainer mixin) for our
trainer and the DistillKit trainer, and values equal to hand-computed ones over two accumulated micro-batches."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerCallback

from distillkit_scd.training.step_losses import StepLossSums
from distillkit_scd.training.trainer_base import StagedTrainerMixin


class FakeAccelerator:
    """`accelerator.reduce(sum)` as if `others` (one tensor per reduce call, in order) came from one more
    process; a single process when `others` is None."""

    def __init__(self, others=None):
        self.device = torch.device("cpu")
        self.others = None if others is None else [torch.tensor(o, dtype=torch.float32) for o in others]
        self.num_processes = 1 if others is None else 2

    def reduce(self, tensor, reduction):
        assert reduction == "sum"
        return tensor if self.others is None else tensor + self.others.pop(0)


def _two_micro_batches() -> StepLossSums:
    sums = StepLossSums()
    # micro-batch 1: 4 label tokens; micro-batch 2: 2 (numerators are sums over tokens)
    sums.add(torch.tensor(0.3), {"loss_ce": torch.tensor(2.0), "loss_distill": torch.tensor(6.0)}, torch.tensor(4.0),
             distill=(torch.tensor(6.0), torch.tensor(4.0)))
    sums.add(torch.tensor(0.5), {"loss_ce": torch.tensor(1.0), "loss_distill": torch.tensor(3.0)}, torch.tensor(2.0),
             distill=(torch.tensor(3.0), torch.tensor(2.0)))
    return sums


def test_sums_over_two_micro_batches_by_hand():
    """Step loss = Σ shares; each field and the distillation term = Σ numerators / Σ denominators, fields in
    the order added; both reset after popping (an empty window gives {} and no distillation term)."""
    sums, acc = _two_micro_batches(), FakeAccelerator()
    loss, distill = sums.pop_step(acc)
    assert loss == pytest.approx(0.8) and distill == pytest.approx(9 / 6)
    fields = sums.pop_fields(acc)
    assert list(fields) == ["loss_ce", "loss_distill"]
    assert fields == pytest.approx({"loss_ce": 3 / 6, "loss_distill": 9 / 6})
    assert sums.pop_fields(acc) == {} and sums.pop_step(acc) == (0.0, None)


def test_sums_over_processes_by_hand():
    """With a second process (step: loss share 0.2, distillation 1.0 over 4 tokens; window: CE 1.0, distill 5.0
    over 4 tokens): the loss is the mean over processes, ratios pool every process's tokens."""
    sums = _two_micro_batches()
    loss, distill = sums.pop_step(FakeAccelerator([[0.2, 1.0, 4.0]]))
    assert loss == pytest.approx((0.8 + 0.2) / 2) and distill == pytest.approx((9 + 1) / (6 + 4))
    fields = sums.pop_fields(FakeAccelerator([[1.0, 5.0, 4.0]]))
    assert fields == pytest.approx({"loss_ce": (3 + 1) / (6 + 4), "loss_distill": (9 + 5) / (6 + 4)})


def _trainer_classes():
    from distillkit_scd.training.trainer import DistillationTrainer

    classes = [DistillationTrainer]
    try:
        from distillkit_scd.integrations import distillkit as dk_int

        dk_int.register()
        from distillkit_scd.integrations.distillkit_fixes import SCDDistillationTrainer

        classes.append(SCDDistillationTrainer)
    except (ImportError, dk_int.DistillKitUnavailable):
        pass  # this stack has no DistillKit: only our trainer (the distillkit stack checks both)
    return classes


def test_both_trainers_log_through_the_mixin():
    """Our trainer and (where installed) the DistillKit trainer take the step loss, the log line's fields and
    `log` itself from the mixin: no trainer keeps its own copy."""
    for cls in _trainer_classes():
        for name in ("pop_step_loss", "train_log_fields", "log"):
            assert getattr(cls, name) is getattr(StagedTrainerMixin, name), (cls.__name__, name)


def test_trainer_logs_hand_computed_means_over_accumulated_micro_batches(tmp_path, tiny_pair, tiny_tokenizer):
    """A real TAID run of one optimizer step from two micro-batches (gradient accumulation 2): the logged CE
    and distillation terms are token means over both micro-batches' label tokens, the weight is α, the
    step's loss is α·KL + (1−α)·CE over them, and TAID reads the distillation term. Reference: float64
    per-row KL(p_t ‖ q) and CE from plain forwards of the untrained models on the recorded micro-batches."""
    import torch.nn.functional as F
    from trl import SFTConfig

    from distillkit_scd.data.collate import DistillationCollator
    from distillkit_scd.data.formatting import tokenize_dataset
    from distillkit_scd.losses import LossSpec, TAIDState
    from distillkit_scd.models.loading import load_model
    from distillkit_scd.tasks import load_task
    from distillkit_scd.training.trainer import DistillationTrainer

    rows, _ = tokenize_dataset(load_task("synthetic", num_train=16, num_test=4, seed=3)["train"], tiny_tokenizer, 64)
    # three rows with 2 label tokens, three with 4: any 3 + 3 split gives micro-batches of unequal token counts,
    # so a mean of micro-batch means would differ from the token mean
    rows = rows.select([0, 1, 3, 7, 9, 10])
    assert sorted(sum(y != -100 for y in r) for r in rows["labels"]) == [2, 2, 2, 4, 4, 4]
    args = SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, max_steps=1, logging_steps=1,
                     per_device_train_batch_size=3, gradient_accumulation_steps=2, learning_rate=1e-2,
                     remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True},
                     save_strategy="no", seed=0)
    seen, steps = [], []

    class Recording(DistillationTrainer):
        def compute_loss(self, model, inputs, *a, **k):
            seen.append({key: v.clone() for key, v in inputs.items() if torch.is_tensor(v)})
            return super().compute_loss(model, inputs, *a, **k)

    class PopStep(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            steps.append((trainer.pop_step_loss(), trainer.last_step_distill))

    alpha, t = 0.3, 0.4
    trainer = Recording(
        model=load_model(str(tiny_pair[1])), args=args, train_dataset=rows, processing_class=tiny_tokenizer,
        data_collator=DistillationCollator(tiny_tokenizer.pad_token_id), teacher_model=load_model(str(tiny_pair[0])),
        loss_spec=LossSpec(divergence="taid", alpha=alpha), taid_state=TAIDState(t_start=t), callbacks=[PopStep()])
    trainer.train()
    assert len(seen) == 2 and len(steps) == 1

    student, teacher = load_model(str(tiny_pair[1])), load_model(str(tiny_pair[0]))  # the weights before the step
    ce = kl = 0.0
    tokens = 0
    for batch in seen:
        keys = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        with torch.no_grad():
            zs, zt = student(**keys).logits.double(), teacher(**keys).logits.double()
        labels = batch["labels"]
        for b in range(labels.shape[0]):
            for s in range(labels.shape[1] - 1):
                y = int(labels[b, s + 1])
                if y == -100:
                    continue
                log_q = F.log_softmax(zs[b, s], -1)
                log_pt = F.log_softmax((1 - t) * zs[b, s] + t * zt[b, s], -1)
                kl += float((log_pt.exp() * (log_pt - log_q)).sum())
                ce -= float(log_q[y])
                tokens += 1
    counts = [int((b["labels"][:, 1:] != -100).sum()) for b in seen]
    assert counts[0] != counts[1] and tokens == sum(counts)

    (logged,) = [e for e in trainer.state.log_history if "loss_ce" in e]
    assert logged["loss_ce"] == pytest.approx(ce / tokens, rel=1e-5, abs=2e-6)
    assert logged["loss_distill"] == pytest.approx(kl / tokens, rel=1e-5, abs=2e-6)
    assert logged["loss_mean_weight"] == pytest.approx(alpha, abs=1e-6)
    assert logged["active_checkpoint"] == 0 and "taid_t" in logged
    step_loss, step_distill = steps[0]
    assert step_loss == pytest.approx((alpha * kl + (1 - alpha) * ce) / tokens, rel=1e-5)
    assert step_distill == pytest.approx(kl / tokens, rel=1e-5)
    assert logged["loss"] == pytest.approx(step_loss, rel=1e-5)  # transformers' own loss agrees


def test_log_line_fields_come_from_the_mixin():
    """`train_log_fields`: the parts (rounded to 6 decimals), `active_checkpoint` only with a checkpoint
    schedule, `taid_t` only with TAID; non-training lines are left alone."""

    class Base:
        def log(self, logs, *args, **kwargs):
            self.logged = logs

    class Host(StagedTrainerMixin, Base):
        accelerator = FakeAccelerator()

    host = Host()
    host.step_sums.add(torch.tensor(1.0), {"loss_ce": torch.tensor(1.0)}, torch.tensor(3.0))
    host.log({"loss": 1.0})
    assert host.logged == {"loss": 1.0, "loss_ce": round(1 / 3, 6)}
    host.has_checkpoint_schedule, host.active_checkpoint = True, 2
    host.taid_state = SimpleNamespace(t=0.123456789)
    host.log({"loss": 1.0})
    assert host.logged == {"loss": 1.0, "active_checkpoint": 2, "taid_t": 0.123457}
    host.log({"eval_loss": 2.0})
    assert host.logged == {"eval_loss": 2.0}
