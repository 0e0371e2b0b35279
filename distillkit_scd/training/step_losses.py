"""`StepLossSums`: the loss parts both trainers sum per optimizer step and per training log line.

Each training micro-batch adds detached device tensors (no host sync per micro-batch). They are reduced over
processes once per optimizer step (`pop_step`: the step's loss, which the non-finite guard checks, and its
distillation term, which TAID's update reads) and once per training log line (`pop_fields`: the logged loss
parts), each in one `accelerator.reduce` call.

Every logged part and the step's distillation term is a ratio Σ numerator / Σ denominator over the micro-batches
and processes it covers. Our `DistillationTrainer` adds label-token sums with the label-token count, so its
parts are token means, the same under any gradient accumulation and process count. The DistillKit trainer's
losses return micro-batch means; it adds each with a count of 1, so its parts are means over micro-batches.
"""

from __future__ import annotations

import torch


class StepLossSums:
    """Running sums of one trainer's loss parts; `trainer_base.StagedTrainerMixin` owns one."""

    def __init__(self):
        self._step: list = [0.0, 0.0, 0.0]  # Σ loss shares, Σ distill numerators, Σ distill denominators
        self._fields: dict[str, torch.Tensor | float] = {}  # log field → Σ numerators since the last log line
        self._denominator: torch.Tensor | float = 0.0  # Σ denominators since the last log line

    def add(self, loss_share, parts: dict[str, torch.Tensor], denominator, distill=None) -> None:
        """One training micro-batch.

        Args:
            loss_share: its share of the optimizer step's loss (the step's loss is the sum of the shares).
            parts: log field name → numerator (detached; added in this order, logged in this order).
            denominator: what the numerators of `parts` are divided by (label tokens, or 1 for a mean).
            distill (`tuple`, *optional*): (numerator, denominator) of the distillation term TAID reads.
        """
        self._step[0] = self._step[0] + loss_share
        if distill is not None:
            self._step[1] = self._step[1] + distill[0]
            self._step[2] = self._step[2] + distill[1]
        for key, value in parts.items():
            self._fields[key] = self._fields.get(key, 0.0) + value
        self._denominator = self._denominator + denominator

    def pop_step(self, accelerator) -> tuple[float, float | None]:
        """(The step's loss averaged over processes, its distillation term or None when none was added);
        resets the step's sums. One reduction, one host sync."""
        values = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=accelerator.device).reshape(())
                              for v in self._step])
        self._step = [0.0, 0.0, 0.0]
        loss, distill, denominator = accelerator.reduce(values, reduction="sum").tolist()
        return loss / accelerator.num_processes, (distill / denominator if denominator > 0 else None)

    def pop_fields(self, accelerator) -> dict[str, float]:
        """Each field's Σ numerator / Σ denominator over the micro-batches and processes since the last call
        ({} when none was added); resets them. One reduction, one host sync."""
        if not self._fields:
            return {}
        keys = list(self._fields)
        values = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=accelerator.device).reshape(())
                              for v in [*self._fields.values(), self._denominator]])
        self._fields, self._denominator = {}, 0.0
        *sums, denominator = accelerator.reduce(values, reduction="sum").tolist()
        denominator = max(denominator, 1.0)
        return {key: value / denominator for key, value in zip(keys, sums)}
