"""Cost of SCD's checkpoint decision (cached vs naive) and of the AW table, relative to one training epoch;
and the error of the top-k + tail probe cache against the exact (full) cache.

    python benchmarks/scd_decision.py --help
    python benchmarks/scd_decision.py                                  # random tiny models, synthetic task
    python benchmarks/scd_decision.py --run-dir runs/quickstart        # trained SFT checkpoints of a run

Measured (one process, CPU unless CUDA is visible):
  epoch      forward + backward of the student over the whole train split (no optimizer step),
  precompute the SCD cache: one teacher pass per checkpoint over the probe set + term 1 (once per run),
  cached     one SCD decision with the cache: one student pass over the probe set + N KL reductions,
  naive      one decision without a cache: N teacher passes + one student pass,
  aw         the AW table: one student pass + N teacher passes over the train split.
Top-k error: |terms(top-k) − terms(exact)| (max over checkpoints) and whether j* agrees, for the student
SFT model and the student base model (two different "current students").
Prints a markdown section and appends it to benchmarks/RESULTS.md (unless --no-append).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def _timed(fn, repeats: int = 1) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _synthetic_setup(args, workdir: Path):
    """Random tiny pair; N checkpoints = the teacher with growing noise and sharper heads (distinct models)."""
    from safetensors.torch import load_file, save_file

    from distillkit_scd.data.formatting import tokenize_dataset
    from distillkit_scd.models.checkpoints import CheckpointEntry, write_manifest
    from distillkit_scd.models.loading import load_tokenizer, make_tiny_pair
    from distillkit_scd.tasks import load_task

    teacher_dir, student_dir = make_tiny_pair(workdir / "tiny", seed=0)
    tokenizer = load_tokenizer(str(student_dir))
    splits = load_task("synthetic", None, num_train=args.num_train, num_test=8, seed=0)
    train, _ = tokenize_dataset(splits["train"], tokenizer, args.max_length, name="train")
    gen = torch.Generator().manual_seed(0)
    entries = []
    sft = workdir / "sft_teacher"
    for j in range(args.num_checkpoints):
        state = load_file(str(teacher_dir / "model.safetensors"))
        for name, t in state.items():
            if t.is_floating_point() and t.ndim == 2:
                state[name] = t + 0.02 * (args.num_checkpoints - j) * torch.randn(t.shape, generator=gen)
        state["lm_head.weight"] = state["lm_head.weight"] * (1 + 2 * j)
        folder = sft / f"checkpoint-{j + 1}"
        folder.mkdir(parents=True)
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        for f in ("config.json", "generation_config.json"):
            if (teacher_dir / f).is_file():
                (folder / f).write_bytes((teacher_dir / f).read_bytes())
        entries.append(CheckpointEntry(j, j + 1, float(j + 1), str(folder)))
    write_manifest(sft, entries, args.num_checkpoints - 1, "final (synthetic benchmark)")
    return tokenizer, train, sft, student_dir, student_dir


def _run_setup(args):
    from distillkit_scd.config import load_recipe
    from distillkit_scd.pipeline.workspace import Workspace
    from distillkit_scd.teachers.aw_table import student_sft_dir

    run = Path(args.run_dir)
    recipe = load_recipe(run / "resolved_recipe.yaml")
    ws = Workspace(recipe)
    tokenizer = ws.tokenizer()
    train, _ = ws.tokenized_splits(tokenizer)
    return tokenizer, train, ws.sft_dir("teacher"), student_sft_dir(ws.sft_dir("student")), ws.base_model("student")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", help="a run directory with sft/teacher and sft/student (trained checkpoints)")
    parser.add_argument("--num-train", type=int, default=256, help="train rows of the synthetic task")
    parser.add_argument("--num-checkpoints", type=int, default=4, help="N (synthetic setup only)")
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--probe-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--top-k", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--repeats", type=int, default=3, help="median of this many timings (cheap ops)")
    parser.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from distillkit_scd.data.collate import DistillationCollator
    from distillkit_scd.models.loading import load_model
    from distillkit_scd.schedules.scd_selector import SCDSelector, probe_batches
    from distillkit_scd.teachers.aw_table import compute_aw_table
    from distillkit_scd.teachers.pool import CheckpointPool

    with tempfile.TemporaryDirectory() as tmp:
        if args.run_dir:
            tokenizer, train, sft_teacher, student_dir, student_base = _run_setup(args)
        else:
            tokenizer, train, sft_teacher, student_dir, student_base = _synthetic_setup(args, Path(tmp))
        pool = CheckpointPool(sft_teacher)
        n = pool.num_checkpoints
        collator = DistillationCollator(tokenizer.pad_token_id)
        student = load_model(str(student_dir))
        teacher = pool.load_model(pool.best_index)
        probes = probe_batches(train, collator, args.probe_size, 0, args.batch_size)
        batches = [collator([train[i] for i in range(s, min(s + args.batch_size, len(train)))])
                   for s in range(0, len(train), args.batch_size)]

        def epoch():
            student.train()
            for b in batches:
                out = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                              position_ids=b["position_ids"], labels=b["labels"])
                out.loss.backward()
            student.zero_grad(set_to_none=True)

        epoch()  # warm-up
        t_epoch = _timed(epoch, args.repeats)
        sel = SCDSelector(pool, teacher, probes, top_k=0, chunk_size=1024)
        t_pre = _timed(sel.precompute)
        t_cached = _timed(lambda: sel.select(student), args.repeats)
        t_naive = _timed(lambda: SCDSelector(pool, teacher, probes, top_k=0).select(student))
        t_aw = _timed(lambda: compute_aw_table(student, pool, train, args.batch_size, teacher=teacher, collator=collator))

        students = {"student SFT": student}
        if str(student_base) != str(student_dir):
            students["student base"] = load_model(str(student_base))
        exact = {name: sel.select(m)[1] for name, m in students.items()}
        exact_choice = {name: sel.select(m)[0] for name, m in students.items()}
        err_rows = []
        for k in args.top_k:
            sk = SCDSelector(pool, teacher, probes, top_k=k)
            sk.precompute()
            mib = sum(sk._nbytes(x) for chunks in sk.cache for x in chunks) / 2**20
            for name, m in students.items():
                choice, terms = sk.select(m)
                e1 = max(abs(a["kl_best"] - b["kl_best"]) for a, b in zip(terms, exact[name]))
                e2 = max(abs(a["kl_student"] - b["kl_student"]) for a, b in zip(terms, exact[name]))
                scale = max(b["total"] for b in exact[name])
                err_rows.append((k, name, e1, e2, scale, choice, exact_choice[name], mib))
        full_mib = sum(sel._nbytes(x) for chunks in sel.cache for x in chunks) / 2**20

    import transformers

    vocab = len(tokenizer)
    setup = (f"run {args.run_dir}" if args.run_dir else
             f"random tiny pair, {n} synthetic checkpoints (teacher + noise, sharpened heads)")
    lines = [
        f"### SCD decision and AW table cost ({datetime.date.today().isoformat()})",
        "",
        f"- command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} python benchmarks/scd_decision.py "
        + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
        f"- machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
        f"python {platform.python_version()}",
        f"- setup: {setup}; {len(train)} train rows, V = {vocab}, N = {n}, probe set {args.probe_size} rows "
        f"({sel.num_positions} label positions), batch {args.batch_size}",
        "",
        "| what | seconds | × one epoch (fwd+bwd) |",
        "|---|---:|---:|",
        f"| one epoch, student forward+backward | {t_epoch:.3f} | 1.00 |",
        f"| SCD cache precompute (once per run: N teacher probe passes + term 1) | {t_pre:.3f} | {t_pre / t_epoch:.3f} |",
        f"| SCD decision, cached (1 student probe pass) | {t_cached:.3f} | {t_cached / t_epoch:.3f} |",
        f"| SCD decision, naive (N teacher + 1 student probe passes) | {t_naive:.3f} | {t_naive / t_epoch:.3f} |",
        f"| AW table (1 student + N teacher passes over train) | {t_aw:.3f} | {t_aw / t_epoch:.3f} |",
        "",
        f"Full probe cache: {full_mib:.1f} MiB on CPU. Top-k + tail cache error against the exact cache "
        "(max over checkpoints; `scale` = largest exact total):",
        "",
        "| k | student | max abs err term 1 | max abs err term 2 | scale | j* top-k | j* exact | cache MiB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k, name, e1, e2, scale, ck, ce, mib in err_rows:
        lines.append(f"| {k} | {name} | {e1:.2e} | {e2:.2e} | {scale:.3f} | {ck} | {ce} | {mib:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_append:
        header = "" if RESULTS.is_file() else "# Benchmark results\n\n"
        with open(RESULTS, "a", encoding="utf-8") as fh:
            fh.write(header + "\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
