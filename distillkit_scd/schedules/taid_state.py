"""TAID's adaptive interpolation t (Shing et al. 2025), the state a TAID run carries across steps."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields


def check_taid(t_start: float, t_end: float, alpha: float, beta: float, where: str = "TAIDState") -> None:
    """TAID's settings, checked in one place: by `TAIDState`, the recipe's `distill.taid` and the DistillKit
    section's `taid` (`where` names the field path in the message).

    Raises:
        ValueError: `<where>.<field>: expected …, got …` for the first value out of range.
    """
    if not 0 <= t_start < 1:
        raise ValueError(f"{where}.t_start: expected a number in [0, 1), got {t_start!r}")
    if not t_start < t_end <= 1:
        raise ValueError(f"{where}.t_end: expected t_start < t_end <= 1 (t_start={t_start}), got {t_end!r}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"{where}.alpha: expected a number in [0, 1] (0 leaves only the linear floor), "
                         f"got {alpha!r}")
    if not 0 <= beta < 1:
        raise ValueError(f"{where}.beta: expected a number in [0, 1), got {beta!r}")


@dataclass
class TAIDState:
    """TAID's adaptive interpolation t, updated once per optimizer step (official rule, SakanaAI/TAID
    `src/distil_losses/taid.py`, `TAID.update_t`).

    After a step with loss L: rel = (L_prev − L)/(L_prev + 1e−15); m ← β·m + (1−β)·rel;
    t ← min(t_end, max(t_start + (t_end − t_start)·step/total_steps, t + α·σ(m)·(1−t))).
    The first update only records L_prev (t stays t_start, m stays 0). t, m and L_prev are the state that
    must be saved with trainer checkpoints (`state_dict`). Floats in float64 (the official code: float32).

    t_start (`float`, defaults to 0.4): t at the first step, in [0, 1).
    t_end (`float`, defaults to 1.0): the cap of t, in (t_start, 1].
    alpha (`float`, defaults to 5e-4): adaptive step size in [0, 1]; 0 leaves only the linear floor.
    beta (`float`, defaults to 0.99): momentum of the relative loss change, in [0, 1).
    """

    t_start: float = 0.4
    t_end: float = 1.0
    alpha: float = 5e-4
    beta: float = 0.99
    t: float | None = None
    momentum: float = 0.0
    prev_loss: float | None = None

    def __post_init__(self):
        check_taid(self.t_start, self.t_end, self.alpha, self.beta)
        if self.t is None:
            self.t = self.t_start

    @classmethod
    def from_config(cls, config) -> TAIDState:
        """The initial state of a run from its settings (`config.TAIDConfig`, or the DistillKit section's
        `TAIDSettings`): anything with t_start, t_end, alpha and beta; other fields (ce_weight) are the loss's."""
        return cls(config.t_start, config.t_end, config.alpha, config.beta)

    def update(self, loss: float, step: int, total_steps: int) -> float:
        """Advance t from the loss of one optimizer step; returns the new t.

        `step / total_steps` is the progress of the linear floor. The official code passes Lightning's
        `global_step` read during the step's forward, i.e. the number of steps finished *before* the step
        whose loss this is (0 for the first). Passing the count including it (HF `state.global_step` in
        `on_step_end`) puts the floor one step ahead.

        Raises:
            ValueError: on a non-finite loss (it would poison the momentum for the rest of the run), a
            negative step or total_steps < 1.
        """
        loss = float(loss)
        if not math.isfinite(loss):
            raise ValueError(f"TAIDState.update: loss must be finite, got {loss!r} at step {step}")
        if step < 0 or total_steps < 1:
            raise ValueError(f"TAIDState.update: need step >= 0 and total_steps >= 1, got step={step}, "
                             f"total_steps={total_steps}")
        if self.prev_loss is None:
            self.prev_loss = loss
            return self.t
        rel = (self.prev_loss - loss) / (self.prev_loss + 1e-15)
        self.momentum = self.beta * self.momentum + (1 - self.beta) * rel
        delta = self.alpha * (1 / (1 + math.exp(-self.momentum))) * (1 - self.t)
        floor = self.t_start + (self.t_end - self.t_start) * step / total_steps
        self.t = min(self.t_end, max(floor, self.t + delta))
        self.prev_loss = loss
        return self.t

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """Restore every field; unknown keys are an error (a state from another class or version)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(state) - known)
        if unknown:
            raise ValueError(f"TAIDState.load_state_dict: unknown keys {unknown}; expected a subset of {sorted(known)}")
        for key, value in state.items():
            setattr(self, key, value)
        self.__post_init__()
