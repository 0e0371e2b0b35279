"""`distillkit-scd toy`: the paper's Fig. 2 experiment — does Adaptive Weighting let a tiny student beat
its teacher?

Set-up (paper, Fig. 2 caption; our choices where it is silent are marked *; `docs/toy.md` has results):
- points (x, y), x ~ U(−4π, 4π)*, y ~ U(−3, 3)*, fed to the models scaled to [−1, 1]²*.
  Train label = [y > sin(0.5x) + ε], ε ~ N(0, σ²) per point, σ = 1 (the paper's noise term).
  *Test labels use the clean boundary (ε = 0)*: test accuracy measures how well a model recovers the
  boundary, not the noise (with σ = 1 noisy test labels would cap every model far below the paper's 97.5).
  *1,000 train and 2,000 test points*; the test set is drawn from its own seed.
- teacher: MLP 2→128→128→2, tanh (17,154 parameters, the paper's "2-layer MLP, 128 hidden, ~16K").
  student: MLP 2→8→2, tanh (42 parameters, the paper's "8 hidden units, ~50") — the parameter counts
  decide the depth: two hidden layers of 8 would be 114 parameters*.
- rows: teacher SFT, student SFT (CE), distill only (KL to the teacher SFT), TD (0.5·CE + 0.5·KL),
  hard AW (paper: KL only where the teacher is better, CE only where the student is better, TD elsewhere;
  "better" = right while the other is wrong*), hard AW by loss (a {0, 1} weight: 1 where the teacher SFT
  has the lower CE on the sample, else 0*), soft AW (w = σ(log(L_S/L_T)) from the SFT models' CE on
  each training sample, `losses.adaptive_weight`).
- training*: full-batch Adam; every student variant starts from the same initialisation as the student
  SFT of its seed and trains for the same number of steps, so the rows differ only in the loss.
Several seeds (data, initialisation) give mean ± sample std of the clean test accuracy.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from distillkit_scd.losses import adaptive_weight, token_kl
from distillkit_scd.utils.atomic import atomic_write, atomic_write_json

logger = logging.getLogger(__name__)

METHODS = ("teacher_sft", "student_sft", "distill_only", "td", "hard_aw", "hard_aw_loss", "soft_aw")
LABELS = {"teacher_sft": "Teacher SFT", "student_sft": "Student SFT", "distill_only": "Distill only",
          "td": "TD", "hard_aw": "Hard AW", "hard_aw_loss": "Hard AW (loss)", "soft_aw": "Soft AW"}
RESULTS_NAME = "toy_results.json"
FIGURE_NAME = "toy_fig2.png"
_X_HALF, _Y_HALF = 4 * math.pi, 3.0  # half-widths of the sampling box


@dataclass(frozen=True)
class ToyConfig:
    """Settings of one toy run.

    n_train (`int`, defaults to 1000): training points per seed (noisy labels).
    n_test (`int`, defaults to 2000): test points per seed (clean labels).
    noise (`float`, defaults to 1.0): σ of the boundary noise ε in the training labels (paper: N(0, 1)).
    teacher_hidden (`tuple[int, ...]`, defaults to (128, 128)): teacher hidden widths.
    student_hidden (`tuple[int, ...]`, defaults to (8,)): student hidden widths.
    teacher_steps / student_steps (`int`, default 800 / 800): full-batch Adam steps per model.
    teacher_lr / student_lr (`float`, default 1e-2 / 3e-2): Adam learning rates.
    alpha (`float`, defaults to 0.5): the KL weight of TD (paper: 0.5·CE + 0.5·KL).
    """

    n_train: int = 1000
    n_test: int = 2000
    noise: float = 1.0
    teacher_hidden: tuple[int, ...] = (128, 128)
    student_hidden: tuple[int, ...] = (8,)
    teacher_steps: int = 800
    student_steps: int = 800
    teacher_lr: float = 1e-2
    student_lr: float = 3e-2
    alpha: float = 0.5

    def __post_init__(self):
        for name in ("n_train", "n_test", "teacher_steps", "student_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"toy: {name}={value!r}; expected a positive integer")
        for name in ("teacher_lr", "student_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"toy: {name}={value!r}; expected a finite number > 0")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"toy: noise={self.noise!r}; expected a finite number >= 0")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"toy: alpha={self.alpha!r}; expected a number in [0, 1]")
        for name in ("teacher_hidden", "student_hidden"):
            value = getattr(self, name)
            if not value or any(not isinstance(h, int) or h < 1 for h in value):
                raise ValueError(f"toy: {name}={value!r}; expected a non-empty tuple of positive integers")


def make_data(n: int, seed: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """n points and labels [y > sin(0.5x) + ε]; returns inputs (n, 2) scaled to [−1, 1]², labels (n,) long."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, generator=g) * 2 - 1) * _X_HALF
    y = (torch.rand(n, generator=g) * 2 - 1) * _Y_HALF
    eps = torch.randn(n, generator=g) * noise
    labels = (y > torch.sin(0.5 * x) + eps).long()
    return torch.stack([x / _X_HALF, y / _Y_HALF], dim=1), labels


def mlp(hidden: Sequence[int], seed: int) -> nn.Sequential:
    """Tanh MLP 2 → hidden… → 2 logits, initialised from `seed` alone (not from the global RNG)."""
    g = torch.Generator().manual_seed(seed)
    dims = [2, *hidden]
    layers: list[nn.Module] = []
    for a, b in zip(dims, dims[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(dims[-1], 2))
    with torch.no_grad():  # PyTorch's default Linear init, drawn from our generator
        for layer in model:
            if isinstance(layer, nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=g)
                layer.bias.uniform_(-bound, bound, generator=g)
    return model


def kd_loss(student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None = None,
            weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per model: mean_i [w_i·KL(p_T ‖ q)_i + (1 − w_i)·CE_i]; w = 0 (plain CE) without a teacher.

    Shapes: student_logits (..., n, 2) (leading dims = independent models), labels (n,),
    teacher_logits (n, 2), weights (..., n) in [0, 1]; returns (...). This is the paper's per-sample AW
    loss with one "token" per sample; the KL is the library's `losses.token_kl`.
    """
    log_q = F.log_softmax(student_logits, dim=-1)
    ce = -log_q.gather(-1, labels.expand(log_q.shape[:-1]).unsqueeze(-1)).squeeze(-1)  # (..., n)
    if teacher_logits is None:
        return ce.mean(-1)
    kl = token_kl(student_logits, teacher_logits.expand_as(student_logits))  # (..., n)
    w = weights.to(ce.dtype)
    return (w * kl + (1 - w) * ce).mean(-1)


class StackedMLP(nn.Module):
    """K independent tanh MLPs of one shape run as batched matmuls: forward (n, 2) → (K, n, 2).

    Training the stack on the sum of the members' losses gives each member exactly the updates it would
    get alone (the gradient of a sum splits by member; Adam is elementwise) at the cost of about one
    model: the five student variants of a seed train together.
    """

    def __init__(self, models: Sequence[nn.Sequential]):
        super().__init__()
        linears = [[m for m in model if isinstance(m, nn.Linear)] for model in models]
        depth = len(linears[0])
        self.weights = nn.ParameterList(  # layer l: (K, in, out)
            [nn.Parameter(torch.stack([ls[i].weight.detach().T for ls in linears])) for i in range(depth)])
        self.biases = nn.ParameterList(  # layer l: (K, 1, out)
            [nn.Parameter(torch.stack([ls[i].bias.detach()[None] for ls in linears])) for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.expand(self.weights[0].shape[0], -1, -1)  # (K, n, 2)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < len(self.weights) - 1:
                h = torch.tanh(h)
        return h

    def member(self, k: int) -> nn.Sequential:
        """Member k as a plain `mlp`-shaped nn.Sequential (copies the weights)."""
        layers: list[nn.Module] = []
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            lin = nn.Linear(w.shape[1], w.shape[2])
            with torch.no_grad():
                lin.weight.copy_(w[k].T)
                lin.bias.copy_(b[k, 0])
            layers += [lin] if i == len(self.weights) - 1 else [lin, nn.Tanh()]
        return nn.Sequential(*layers).eval()


def train(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, steps: int, lr: float,
          teacher_logits: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> nn.Module:
    """Full-batch Adam on `kd_loss` (summed over stacked members); returns the model, trained in place."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = kd_loss(model(x), labels, teacher_logits, weights).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def soft_weights(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Soft AW per sample: σ(log(L_S / L_T)) with L = the SFT model's CE on the sample. (n,) float32."""
    l_s = F.cross_entropy(student_logits, labels, reduction="none")
    l_t = F.cross_entropy(teacher_logits, labels, reduction="none")
    return adaptive_weight(l_s, l_t).float()


def hard_weights(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                 rule: str = "correct", alpha: float = 0.5) -> torch.Tensor:
    """Hard AW per sample, (n,) float32.

    rule "correct" (paper caption): 1 (KL only) where the teacher is right and the student wrong, 0 (CE
    only) where the student is right and the teacher wrong, `alpha` (TD) where both or neither are right.
    rule "loss": 1 where the teacher has the strictly lower CE, else 0 (ties go to CE).
    """
    if rule == "correct":
        t_right = teacher_logits.argmax(-1) == labels
        s_right = student_logits.argmax(-1) == labels
        w = torch.full(labels.shape, float(alpha))
        w[t_right & ~s_right] = 1.0
        w[s_right & ~t_right] = 0.0
        return w
    if rule == "loss":
        l_s = F.cross_entropy(student_logits, labels, reduction="none")
        l_t = F.cross_entropy(teacher_logits, labels, reduction="none")
        return (l_t < l_s).float()
    raise ValueError(f"toy: hard AW rule={rule!r}; expected 'correct' or 'loss'")


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> float:
    return (model(x).argmax(-1) == labels).float().mean().item()


def run_seed(seed: int, config: ToyConfig) -> tuple[dict[str, float], dict]:
    """Train every row for one seed; returns ({method: clean test accuracy}, details for the figure)."""
    c = config
    x, labels = make_data(c.n_train, seed, c.noise)
    x_test, y_test = make_data(c.n_test, seed + 10_000, 0.0)  # clean boundary, disjoint seed
    teacher = train(mlp(c.teacher_hidden, seed), x, labels, c.teacher_steps, c.teacher_lr)
    student_init = 1_000 + seed  # one student initialisation shared by every student row
    student = train(mlp(c.student_hidden, student_init), x, labels, c.student_steps, c.student_lr)
    with torch.no_grad():
        t_logits, s_logits = teacher(x), student(x)  # (n, 2) each, constants from here on
    weights = {
        "distill_only": torch.ones(c.n_train),
        "td": torch.full((c.n_train,), c.alpha),
        "hard_aw": hard_weights(s_logits, t_logits, labels, "correct", c.alpha),
        "hard_aw_loss": hard_weights(s_logits, t_logits, labels, "loss"),
        "soft_aw": soft_weights(s_logits, t_logits, labels),
    }
    names = list(weights)
    stack = StackedMLP([mlp(c.student_hidden, student_init) for _ in names])
    train(stack, x, labels, c.student_steps, c.student_lr, t_logits, torch.stack([weights[k] for k in names]))
    models: dict[str, nn.Module] = {"teacher_sft": teacher, "student_sft": student}
    models.update({name: stack.member(k) for k, name in enumerate(names)})
    accs = {name: accuracy(models[name], x_test, y_test) for name in METHODS}
    train_accs = {name: accuracy(models[name], x, labels) for name in METHODS}
    detail = {"models": models, "weights": weights, "x": x, "labels": labels, "train_accuracy": train_accs}
    return accs, detail


def _summary(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for k in METHODS:
        vals = [a[k] for a in per_seed]
        out[k] = {"mean": statistics.mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    return out


def plot(detail: dict, summary: dict, path: Path, seed: int) -> None:
    """Fig. 2 analogue: decision regions of every row (seed `seed`), the soft AW map, accuracy bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = 150
    xs = torch.linspace(-1, 1, res)
    flat = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)  # (res², 2)
    x, labels = detail["x"], detail["labels"]
    shown = slice(0, 400)  # a subset of the training points keeps the panels readable
    boundary = torch.sin(0.5 * xs * _X_HALF) / _Y_HALF  # the clean boundary in scaled coordinates
    fig, axes = plt.subplots(3, 3, figsize=(12, 10.5))
    for ax, name in zip(axes.flat, METHODS):
        with torch.no_grad():
            prob = detail["models"][name](flat).softmax(-1)[:, 1].reshape(res, res)
        ax.contourf(xs, xs, prob, levels=[0, 0.5, 1], colors=["#c9daf0", "#f3d4c5"], alpha=0.8)
        ax.scatter(x[shown, 0], x[shown, 1], c=labels[shown], s=3, cmap="coolwarm", vmin=0, vmax=1)
        ax.plot(xs, boundary, "k--", lw=1)
        m = summary[name]
        ax.set_title(f"{LABELS[name]}: {100 * m['mean']:.1f} ± {100 * m['std']:.1f}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = axes.flat[7]
    sc = ax.scatter(x[:, 0], x[:, 1], c=detail["weights"]["soft_aw"], s=3, cmap="viridis", vmin=0, vmax=1)
    ax.plot(xs, boundary, "k--", lw=1)
    fig.colorbar(sc, ax=ax, fraction=0.046)
    ax.set_title("Soft AW per training point (1 = distill)", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax = axes.flat[8]
    ax.bar(range(len(METHODS)), [100 * summary[k]["mean"] for k in METHODS],
           yerr=[100 * summary[k]["std"] for k in METHODS], color=["#888888"] + ["#4c72b0"] * 6, capsize=2)
    ax.set_xticks(range(len(METHODS)), [LABELS[k] for k in METHODS], rotation=45, ha="right", fontsize=8)
    ax.set_ylim(50, 100)
    ax.set_title("clean test accuracy (%), mean ± std", fontsize=10)
    fig.suptitle(f"Toy sine boundary (panels: seed {seed}; dashed: clean boundary sin(0.5x))", fontsize=11)
    fig.tight_layout()

    def write(tmp: Path) -> None:
        fig.savefig(tmp, dpi=70)
        _shrink_png(tmp)

    try:
        atomic_write(path, write, suffix=".png")
    finally:
        plt.close(fig)


def _shrink_png(path: Path) -> None:
    """Re-save with a 128-colour palette (a few flat regions and markers): ~4x smaller, same look."""
    try:
        from PIL import Image  # a matplotlib dependency
    except ImportError:  # pragma: no cover
        return
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=128)
    small.save(path, format="PNG", optimize=True)


def run_toy(seeds: Sequence[int] = (0, 1, 2, 3, 4), out_dir: str | Path = "runs/toy",
            config: ToyConfig | None = None, figure: bool = True) -> dict:
    """Run every row for each seed; write `toy_results.json` (+ `toy_fig2.png`) into `out_dir` atomically.

    Returns the results dict: config, seeds, per_seed and summary ({method: {mean, std}}) accuracies on
    the clean test set, train accuracies, mean soft/hard AW, and the paper's claim checked on our numbers.
    Raises ValueError on an empty or repeated seed list.
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"toy: seeds={seeds!r}; expected a non-empty list of distinct integers")
    config = config or ToyConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_seed, per_seed_train, aw_means, first = [], [], [], None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: extra threads only add overhead; restored below
    try:
        runs = [run_seed(seed, config) for seed in seeds]
    finally:
        torch.set_num_threads(threads)
    for seed, (accs, detail) in zip(seeds, runs):
        per_seed.append(accs)
        per_seed_train.append(detail["train_accuracy"])
        aw_means.append({k: float(detail["weights"][k].mean()) for k in ("hard_aw", "hard_aw_loss", "soft_aw")})
        logger.info("toy seed %d: %s", seed, {k: round(v, 4) for k, v in accs.items()})
        first = first or detail
    summary = _summary(per_seed)
    result = {
        "config": asdict(config), "seeds": seeds, "per_seed": per_seed, "summary": summary,
        "train_accuracy": per_seed_train, "mean_weights": aw_means,
        "paper": {"teacher_sft": 0.888, "soft_aw": 0.975},
        "soft_aw_beats_teacher": summary["soft_aw"]["mean"] > summary["teacher_sft"]["mean"],
        "soft_aw_beats_student_sft": summary["soft_aw"]["mean"] > summary["student_sft"]["mean"],
    }
    atomic_write_json(out / RESULTS_NAME, result, trailing_newline=True)
    if figure:
        plot(first, summary, out / FIGURE_NAME, seeds[0])
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `distillkit-scd toy`."""
    d = ToyConfig()
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds, 0..N-1 (default 5)")
    parser.add_argument("--out", default="runs/toy", help="output folder (default runs/toy)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"full-batch Adam steps for every model (default {d.teacher_steps})")
    parser.add_argument("--n-train", type=int, default=d.n_train, help="training points per seed")
    parser.add_argument("--no-figure", action="store_true", help="write the JSON only")


def run_from_args(args: argparse.Namespace) -> int:
    """Run the toy from parsed `add_arguments` options; print the table; return the exit code."""
    if args.seeds < 1:
        raise ValueError(f"toy: --seeds {args.seeds}; expected at least 1")
    overrides = {"n_train": args.n_train}
    if args.steps is not None:
        overrides.update(teacher_steps=args.steps, student_steps=args.steps)
    result = run_toy(range(args.seeds), args.out, ToyConfig(**overrides), figure=not args.no_figure)
    print(f"{'method':15} clean test accuracy % (mean ± std over {len(result['seeds'])} seeds)")
    for k in METHODS:
        s = result["summary"][k]
        print(f"{k:15} {100 * s['mean']:5.1f} ± {100 * s['std']:.1f}")
    print(f"soft AW above teacher: {result['soft_aw_beats_teacher']}; "
          f"above student SFT: {result['soft_aw_beats_student_sft']}; wrote {Path(args.out)}")
    return 0
