"""Training guards: a non-finite loss stops the run naming the step, the batch and the last checkpoint."""

from types import SimpleNamespace

import pytest
import torch

from distillkit_scd.callbacks import NonFiniteLossError, StepLossCallback
from distillkit_scd.losses import TAIDState


class FakeTrainer:
    def __init__(self, losses):
        self.losses = list(losses)
        self.taid_state = TAIDState()
        self.last_batch_ids = torch.tensor([4, 9])

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


def test_taid_advances_once_per_step_from_the_step_loss():
    """The callback feeds TAID exactly one loss per optimizer step."""
    trainer = FakeTrainer([3.0, 2.0, 1.0])
    cb = StepLossCallback(trainer)
    args = SimpleNamespace(output_dir="/nonexistent")
    for step in (1, 2, 3):
        cb.on_step_end(args, SimpleNamespace(global_step=step, max_steps=3), None)
    assert trainer.taid_state.prev_loss == 1.0 and trainer.losses == []
    assert trainer.taid_state.t == pytest.approx(1.0)  # linear floor reaches t_end at the last step
