"""TAIDState follows the official adaptive rule step by step, and survives a save/restore."""

import math

import pytest

from distillkit_scd.losses import TAIDState


def official_trajectory(losses, total, t_start=0.4, t_end=1.0, alpha=5e-4, beta=0.99):
    """Hand-rolled loop of SakanaAI/TAID's update_t (plain floats)."""
    t, m, prev, out = t_start, 0.0, math.inf, []
    for step, loss in enumerate(losses, start=1):
        if math.isinf(prev):
            prev = loss
            out.append(t)
            continue
        rel = (prev - loss) / (prev + 1e-15)
        m = beta * m + (1 - beta) * rel
        target = t_start + (t_end - t_start) * step / total
        t = min(t_end, max(target, t + alpha * (1 / (1 + math.exp(-m))) * (1 - t)))
        prev = loss
        out.append(t)
    return out


@pytest.mark.parametrize("alpha", [5e-4, 0.05])
def test_trajectory_matches_official_rule(alpha):
    """t after every optimizer step equals the official loop (decreasing, flat and rising losses)."""
    losses = [3.0 / (1 + 0.1 * i) for i in range(40)] + [1.0] * 10 + [1.0 + 0.05 * i for i in range(10)]
    state = TAIDState(alpha=alpha)
    got = [state.update(loss, step, len(losses)) for step, loss in enumerate(losses, start=1)]
    want = official_trajectory(losses, len(losses), alpha=alpha)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_first_update_only_records_and_t_is_clamped():
    """The first update leaves t at t_start; t never exceeds t_end and reaches it at the last step."""
    state = TAIDState(t_start=0.4, t_end=0.9)
    assert state.update(5.0, 1, 10) == 0.4 and state.prev_loss == 5.0
    for step in range(2, 11):
        t = state.update(5.0 - step * 0.1, step, 10)
        assert t <= 0.9
    assert state.t == pytest.approx(0.9)


def test_linear_floor_when_loss_rises():
    """With rising loss the momentum term is small and t follows the linear floor t_start + Δ·step/total."""
    state = TAIDState(alpha=1e-9)
    state.update(1.0, 1, 100)
    assert state.update(2.0, 50, 100) == pytest.approx(0.4 + 0.6 * 0.5)


def test_state_round_trip():
    """state_dict/load_state_dict restore t, momentum and previous loss exactly."""
    a = TAIDState()
    for step, loss in enumerate([3.0, 2.5, 2.0], start=1):
        a.update(loss, step, 10)
    b = TAIDState()
    b.load_state_dict(a.state_dict())
    assert b.update(1.5, 4, 10) == a.update(1.5, 4, 10)


def test_invalid_parameters_raise():
    """Out-of-range settings fail with the parameter named."""
    with pytest.raises(ValueError, match="t_start"):
        TAIDState(t_start=0.9, t_end=0.5)
    with pytest.raises(ValueError, match="beta"):
        TAIDState(beta=1.0)
