"""`distillkit-scd toy`: the paper's Fig. 2 experiment — does Adaptive Weighting let a tiny student beat
its teacher?

Set-up (paper, Fig. 2 caption; choices where it is silent are marked *):
- points (x, y), x ~ U(−4π, 4π)*, y ~ U(−3, 3)*; train label = [y > sin(0.5x) + ε], ε ~ N(0, σ²), σ = 1
  (the paper's noise); *test labels use the clean boundary (ε = 0), so test accuracy measures how well a
  model recovers the boundary rather than the noise*. 2,000 train and 2,000 test points*.
- teacher: MLP 2→128→128→2 (≈17K parameters, the paper's "~16K"); student: MLP 2→8→2 (42 parameters,
  the paper's "~50").
- rows: teacher SFT, student SFT (CE), distill only (KL to the teacher), TD (0.5·CE + 0.5·KL),
  hard AW (KL only where the teacher SFT is right and the student SFT wrong, CE only in the opposite
  case, TD elsewhere), soft AW (w = σ(log(L_S/L_T)) from the two SFT models' per-sample CE).
Every student variant trains from scratch with the same steps; several seeds give mean ± std.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from distillkit_scd.losses import adaptive_weight, token_kl

METHODS = ("teacher_sft", "student_sft", "distill_only", "td", "hard_aw", "soft_aw")


def make_data(n: int, seed: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, generator=g) * 2 - 1) * 4 * math.pi
    y = (torch.rand(n, generator=g) * 2 - 1) * 3
    eps = torch.randn(n, generator=g) * noise
    labels = (y > torch.sin(0.5 * x) + eps).long()
    return torch.stack([x / (4 * math.pi), y / 3], dim=1), labels  # inputs scaled to [−1, 1]


def mlp(hidden: list[int], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    dims = [2, *hidden]
    layers: list[nn.Module] = []
    for a, b in zip(dims, dims[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(dims[-1], 2))


def train(model: nn.Module, x, labels, steps: int, lr: float, teacher_logits=None, weights=None) -> nn.Module:
    """Full-batch Adam on w·KL(teacher‖model) + (1−w)·CE per sample (w = 0 without a teacher)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    w = torch.zeros(len(x)) if weights is None else weights.float()
    for _ in range(steps):
        logits = model(x)
        ce = F.cross_entropy(logits, labels, reduction="none")
        kl = token_kl(logits, teacher_logits) if teacher_logits is not None else torch.zeros_like(ce)
        loss = (w * kl + (1 - w) * ce).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@torch.no_grad()
def accuracy(model, x, labels) -> float:
    return (model(x).argmax(-1) == labels).float().mean().item()


def run_seed(seed: int, steps: int = 1500, n: int = 2000, noise: float = 1.0) -> tuple[dict, dict]:
    x, labels = make_data(n, seed, noise)
    x_test, y_test = make_data(n, seed + 10_000, 0.0)
    teacher = train(mlp([128, 128], seed), x, labels, steps, 1e-2)
    student = train(mlp([8], seed), x, labels, steps, 3e-2)
    with torch.no_grad():
        t_logits = teacher(x)
        s_logits = student(x)
        l_t = F.cross_entropy(t_logits, labels, reduction="none")
        l_s = F.cross_entropy(s_logits, labels, reduction="none")
        t_right = t_logits.argmax(-1) == labels
        s_right = s_logits.argmax(-1) == labels
    hard = torch.full((n,), 0.5)
    hard[t_right & ~s_right] = 1.0
    hard[s_right & ~t_right] = 0.0
    soft = adaptive_weight(l_s, l_t).float()
    models = {"teacher_sft": teacher, "student_sft": student}
    for name, w in (("distill_only", torch.ones(n)), ("td", torch.full((n,), 0.5)), ("hard_aw", hard),
                    ("soft_aw", soft)):
        models[name] = train(mlp([8], seed), x, labels, steps, 3e-2, t_logits, w)
    accs = {name: accuracy(m, x_test, y_test) for name, m in models.items()}
    return accs, {"models": models, "soft_aw": soft, "x": x, "labels": labels}


def plot(detail: dict, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 200), torch.linspace(-1, 1, 200), indexing="xy"), -1)
    flat = grid.reshape(-1, 2)
    fig, axes = plt.subplots(2, 4, figsize=(15, 6.5))
    x, labels = detail["x"], detail["labels"]
    xs = torch.linspace(-1, 1, 200)
    for ax, name in zip(axes.flat, METHODS):
        with torch.no_grad():
            prob = detail["models"][name](flat).softmax(-1)[:, 1].reshape(200, 200)
        ax.contourf(xs, xs, prob, levels=[0, 0.5, 1], colors=["#c9daf0", "#f3d4c5"], alpha=0.8)
        ax.scatter(x[:400, 0], x[:400, 1], c=labels[:400], s=3, cmap="coolwarm")
        ax.plot(xs, torch.sin(0.5 * xs * 4 * math.pi) / 3, "k--", lw=1)
        m = summary[name]
        ax.set_title(f"{name}: {100 * m['mean']:.1f} ± {100 * m['std']:.1f}")
        ax.set_xticks([])
        ax.set_yticks([])
    ax = axes.flat[6]
    ax.scatter(x[:, 0], x[:, 1], c=detail["soft_aw"], s=3, cmap="viridis", vmin=0, vmax=1)
    ax.set_title("soft AW per training point")
    ax.set_xticks([])
    ax.set_yticks([])
    ax = axes.flat[7]
    names = list(METHODS)
    ax.bar(range(len(names)), [100 * summary[k]["mean"] for k in names],
           yerr=[100 * summary[k]["std"] for k in names], color="#4c72b0")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(50, 100)
    ax.set_title("test accuracy (%)")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)
    plt.close(fig)


def run_toy(seeds=(0, 1, 2, 3, 4), out_dir: str | Path = "runs/toy", steps: int = 1500, figure: bool = True) -> dict:
    """Run all rows for each seed; write `toy_results.json` (+ `toy_fig2.png`); return the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_seed, first = [], None
    for seed in seeds:
        accs, detail = run_seed(seed, steps)
        per_seed.append(accs)
        first = first or detail
    summary = {k: {"mean": statistics.mean(a[k] for a in per_seed),
                   "std": statistics.pstdev(a[k] for a in per_seed)} for k in METHODS}
    result = {"seeds": list(seeds), "steps": steps, "per_seed": per_seed, "summary": summary,
              "soft_aw_beats_teacher": summary["soft_aw"]["mean"] > summary["teacher_sft"]["mean"]}
    tmp = out / "toy_results.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out / "toy_results.json")
    if figure:
        plot(first, summary, out / "toy_fig2.png")
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (default 5)")
    parser.add_argument("--steps", type=int, default=1500, help="full-batch Adam steps per model")
    parser.add_argument("--out", default="runs/toy", help="output folder")


def run_from_args(args) -> int:
    result = run_toy(tuple(range(args.seeds)), args.out, args.steps)
    print(f"{'method':14} test accuracy (mean ± std over {len(result['seeds'])} seeds)")
    for k in METHODS:
        s = result["summary"][k]
        print(f"{k:14} {100 * s['mean']:.1f} ± {100 * s['std']:.1f}")
    print(f"soft AW above teacher: {result['soft_aw_beats_teacher']}; figure: {Path(args.out) / 'toy_fig2.png'}")
    return 0
