"""The Fig. 2 toy: data, weights, loss and training pieces against plain references; a small full run."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from distillkit_scd import toy

SMALL = toy.ToyConfig(n_train=200, n_test=300, teacher_hidden=(16, 16), teacher_steps=60, student_steps=60)


def test_parameter_counts_match_the_paper_caption():
    """Teacher 2→128→128→2 has ~16K parameters (17,154); student 2→8→2 has ~50 (42)."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    cfg = toy.ToyConfig()
    assert count(toy.mlp(cfg.teacher_hidden, 0)) == 2 * 128 + 128 + 128 * 128 + 128 + 128 * 2 + 2 == 17154
    assert count(toy.mlp(cfg.student_hidden, 0)) == 2 * 8 + 8 + 8 * 2 + 2 == 42


def test_data_labels_follow_the_sine_boundary():
    """With no noise every label is [y > sin(0.5x)] in unscaled coordinates; inputs lie in [−1, 1]²."""
    x, labels = toy.make_data(500, seed=3, noise=0.0)
    assert x.shape == (500, 2) and labels.shape == (500,)
    assert float(x.abs().max()) <= 1.0
    for (a, b), lab in zip(x.tolist(), labels.tolist()):
        xx, yy = a * 4 * math.pi, b * 3.0
        assert lab == int(yy > math.sin(0.5 * xx))


def test_data_noise_flips_some_labels_and_seed_decides():
    """σ = 1 noise changes a sizeable share of labels near the boundary; same seed → same data."""
    x0, clean = toy.make_data(2000, seed=1, noise=0.0)
    x1, noisy = toy.make_data(2000, seed=1, noise=1.0)
    assert torch.equal(x0, x1)
    flipped = (clean != noisy).float().mean().item()
    assert 0.1 < flipped < 0.4
    x2, _ = toy.make_data(2000, seed=2, noise=1.0)
    assert not torch.equal(x0, x2)


def _ce64(logits, labels):
    """Plain float64 per-sample CE by loops: −log softmax(z)[label]."""
    out = []
    for z, y in zip(logits.double().tolist(), labels.tolist()):
        m = max(z)
        lse = m + math.log(sum(math.exp(v - m) for v in z))
        out.append(lse - z[y])
    return torch.tensor(out, dtype=torch.float64)


def test_soft_weights_equal_the_loss_ratio_formula():
    """Soft AW = L_S / (L_S + L_T) per sample (= σ(log(L_S/L_T))), every value in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    s = torch.randn(37, 2, generator=g) * 3
    t = torch.randn(37, 2, generator=g) * 3
    labels = torch.randint(0, 2, (37,), generator=g)
    w = toy.soft_weights(s, t, labels)
    ls, lt = _ce64(s, labels), _ce64(t, labels)
    ref = ls / (ls + lt)
    torch.testing.assert_close(w.double(), ref, atol=1e-6, rtol=1e-5)
    assert bool(((w >= 0) & (w <= 1)).all())


def test_hard_weights_by_hand():
    """Rule "correct": teacher-only-right → 1, student-only-right → 0, both/neither → α.
    Rule "loss": 1 exactly where the teacher's CE is strictly lower."""
    labels = torch.tensor([1, 1, 1, 1, 0])
    teacher = torch.tensor([[0.0, 2.0], [2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 3.0], [2.0, 0.0], [0.0, 0.0]])
    # sample 0: T right, S wrong; 1: S right, T wrong; 2: both right (S more sure); 3: both wrong; 4: tie
    w = toy.hard_weights(student, teacher, labels, "correct", alpha=0.5)
    assert w.tolist() == [1.0, 0.0, 0.5, 0.5, 0.5]
    w = toy.hard_weights(student, teacher, labels, "loss")
    assert w.tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="rule='other'"):
        toy.hard_weights(student, teacher, labels, "other")


def test_kd_loss_against_a_float64_loop():
    """kd_loss = mean_i [w_i·Σ_c p log(p/q) + (1 − w_i)·CE_i], per stacked model; gradients match too."""
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3, 11, 2, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(11, 2, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 2, (11,), generator=g)
    w = torch.rand(3, 11, generator=g, dtype=torch.float64)
    got = toy.kd_loss(s, labels, t, w)
    ref = []
    for k in range(3):
        total = 0.0
        for i in range(11):
            q = [math.exp(v) for v in s[k, i].tolist()]
            q = [v / sum(q) for v in q]
            p = [math.exp(v) for v in t[i].tolist()]
            p = [v / sum(p) for v in p]
            kl = sum(pc * math.log(pc / qc) for pc, qc in zip(p, q))
            ce = -math.log(q[labels[i]])
            total += w[k, i].item() * kl + (1 - w[k, i].item()) * ce
        ref.append(total / 11)
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64), atol=1e-10, rtol=1e-10)
    # gradient of the weighted loss equals w·(q − p) + (1 − w)·(q − onehot), divided by n
    got.sum().backward()
    q = s.detach().softmax(-1)
    p = t.softmax(-1)
    onehot = torch.nn.functional.one_hot(labels, 2).double()
    grad = (w[..., None] * (q - p) + (1 - w[..., None]) * (q - onehot)) / 11
    torch.testing.assert_close(s.grad, grad, atol=1e-10, rtol=1e-10)
    # without a teacher it is the mean CE
    torch.testing.assert_close(toy.kd_loss(t, labels), _ce64(t, labels).mean(), atol=1e-10, rtol=1e-10)


def test_stacked_training_equals_training_each_model_alone():
    """A StackedMLP trained on the sum of its members' losses gives each member the weights it gets alone."""
    x, labels = toy.make_data(64, seed=0, noise=1.0)
    teacher_logits = torch.randn(64, 2, generator=torch.Generator().manual_seed(5))
    weights = torch.stack([torch.zeros(64), torch.full((64,), 0.5), torch.rand(64)])
    stack = toy.train(toy.StackedMLP([toy.mlp((8,), 7) for _ in range(3)]), x, labels, 30, 3e-2,
                      teacher_logits, weights)
    for k in range(3):
        alone = toy.train(toy.mlp((8,), 7), x, labels, 30, 3e-2, teacher_logits, weights[k])
        with torch.no_grad():
            torch.testing.assert_close(stack.member(k)(x), alone(x), atol=1e-5, rtol=1e-5)


def test_run_seed_is_deterministic_and_seed_dependent():
    """Same seed → identical accuracies and soft weights; another seed → different ones."""
    a, da = toy.run_seed(0, SMALL)
    b, db = toy.run_seed(0, SMALL)
    c, _ = toy.run_seed(1, SMALL)
    assert a == b
    assert torch.equal(da["weights"]["soft_aw"], db["weights"]["soft_aw"])
    assert a != c
    assert set(a) == set(toy.METHODS)
    for name, w in da["weights"].items():
        assert w.shape == (SMALL.n_train,) and bool(((w >= 0) & (w <= 1)).all()), name


def test_small_run_writes_results_and_figure(tmp_path):
    """One seed, small config: < 10 s; JSON has every method with accuracies in [0, 1]; the PNG exists."""
    start = time.perf_counter()
    result = toy.run_toy([0], tmp_path, SMALL)
    assert time.perf_counter() - start < 10
    saved = json.loads((tmp_path / toy.RESULTS_NAME).read_text())
    assert saved["summary"] == result["summary"]
    assert saved["config"]["n_train"] == 200
    for k in toy.METHODS:
        assert 0.0 <= saved["summary"][k]["mean"] <= 1.0
        assert saved["summary"][k]["std"] == 0.0  # one seed
    png = tmp_path / toy.FIGURE_NAME
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp*"))  # atomic writes leave no temporaries


def test_toy_command_parses_options(tmp_path):
    """`distillkit-scd toy --seeds 1 --steps 20 --n-train 100 --no-figure` runs and writes the JSON only."""
    from distillkit_scd.cli import main

    assert main(["toy", "--seeds", "1", "--steps", "20", "--n-train", "100", "--no-figure",
                 "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / toy.RESULTS_NAME).read_text())
    assert saved["seeds"] == [0] and saved["config"]["student_steps"] == 20
    assert not (tmp_path / toy.FIGURE_NAME).exists()


@pytest.mark.parametrize("field,value", [("n_train", 0), ("teacher_steps", -1), ("student_lr", 0.0),
                                         ("noise", -0.1), ("alpha", 1.5), ("student_hidden", ())])
def test_bad_config_names_the_field(field, value):
    """Every invalid setting raises ValueError naming the field and the value."""
    with pytest.raises(ValueError, match=f"{field}={value!r}".replace("(", r"\(").replace(")", r"\)")):
        toy.ToyConfig(**{field: value})


def test_bad_seeds_are_refused(tmp_path):
    """An empty or repeated seed list is a ValueError, before any training."""
    with pytest.raises(ValueError, match="seeds"):
        toy.run_toy([], tmp_path, SMALL)
    with pytest.raises(ValueError, match="seeds"):
        toy.run_toy([1, 1], tmp_path, SMALL)
