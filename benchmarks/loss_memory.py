"""Peak memory and time of the chunked compound loss against the naive (materialised-logits) loss.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/loss_memory.py                 # Llama 3B ← 8B sizes
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/loss_memory.py --tokens 512 --vocab 8192 --no-append

What is measured: one forward + backward of the loss on random inputs (N label tokens, student hidden
(N, H_s) with grad, student lm_head (V, H_s) with grad, teacher hidden (N, H_t) and lm_head (V, H_t)),
the way the trainer calls it: `losses.chunked_compound_loss` against `losses.compound_loss_from_logits` on
logits computed with autograd from the same hidden states.

How memory is measured (honest, no tracemalloc):
- CUDA: `torch.cuda.max_memory_allocated()` minus the allocation before the call (inputs and weights).
- CPU: every measurement runs in a fresh subprocess; peak = the kernel's high-water mark of resident memory
  (`ru_maxrss`) at the end minus the resident memory just before the loss call. Setup allocates only the
  inputs (no larger temporaries), so the difference is the extra peak of the loss + backward (gradient
  buffers included). Naive runs that would not fit in RAM are skipped and extrapolated (linear in N).
A benchmark measures; it never asserts a time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _available_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def worker(cfg: dict) -> dict:
    """One measurement in this process: build inputs, run loss + backward once, report peak and time."""
    import torch

    from distillkit_scd.losses import LossSpec, chunked_compound_loss, compound_loss_from_logits

    torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    dtype = getattr(torch, cfg["dtype"])
    n, v, hs_dim, ht_dim = cfg["tokens"], cfg["vocab"], cfg["student_hidden"], cfg["teacher_hidden"]
    g = torch.Generator(device=device).manual_seed(0)
    hs = torch.randn(n, hs_dim, generator=g, device=device, dtype=dtype).requires_grad_(True)
    ws = (torch.randn(v, hs_dim, generator=g, device=device, dtype=dtype) * hs_dim**-0.5).requires_grad_(True)
    ht = torch.randn(n, ht_dim, generator=g, device=device, dtype=dtype)
    wt = torch.randn(v, ht_dim, generator=g, device=device, dtype=dtype) * ht_dim**-0.5
    targets = torch.randint(0, v, (n,), generator=g, device=device)
    spec = LossSpec(divergence=cfg["divergence"], chunk_size=cfg["chunk_size"] or 1024)

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = _rss_mib()
    start = time.perf_counter()
    if cfg["method"] == "chunked":
        loss, _ = chunked_compound_loss(hs, ws, targets, spec, ht, wt, taid_t=0.5)
    else:
        with torch.no_grad():
            teacher_logits = ht @ wt.t()  # (N, V)
        loss, _ = compound_loss_from_logits(hs @ ws.t(), teacher_logits, targets, spec, taid_t=0.5)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    seconds = time.perf_counter() - start
    return {"peak_extra_mib": peak - before, "before_mib": before, "seconds": seconds, "loss": float(loss.detach())}


def _measure(cfg: dict) -> dict | None:
    """Run `worker` in a fresh subprocess (CPU: its own RSS high-water mark); None if it failed."""
    proc = subprocess.run([sys.executable, __file__, "--_worker", json.dumps(cfg)], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine(device: str, threads: int) -> str:
    import torch

    if device == "cuda":
        hw = torch.cuda.get_device_name(0)
    else:
        hw = f"{_cpu_name()}, {os.cpu_count()} cores, {_available_gib():.0f} GiB available"
    return (f"{hw}; torch {torch.__version__} ({threads} threads), python {platform.python_version()}, "
            f"{platform.system()} {platform.machine()}")


def _fit_line(points: list[tuple[int, float]]):
    """Least-squares a + b·N through (N, value) points; None with fewer than 2 points."""
    if len(points) < 2:
        return None
    xs, ys = zip(*points)
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def _append_results(text: str) -> None:
    """Append a section to RESULTS.md atomically (tmp file + os.replace)."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text(old.rstrip("\n") + "\n\n" + text)
    os.replace(tmp, RESULTS)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--tokens", type=int, default=4096, help="label tokens N of the chunked run (default 4096)")
    p.add_argument("--vocab", type=int, default=128256, help="vocabulary V (default 128256, Llama 3)")
    p.add_argument("--student-hidden", type=int, default=3072, help="student hidden size (Llama-3.2-3B: 3072)")
    p.add_argument("--teacher-hidden", type=int, default=4096, help="teacher hidden size (Llama-3.1-8B: 4096)")
    p.add_argument("--chunk-sizes", type=int, nargs="+", default=[1024], help="chunk sizes to measure")
    p.add_argument("--compare-tokens", type=int, nargs="*", default=[256, 512, 1024],
                   help="smaller N where naive and chunked both run (naive at --tokens too, if it fits)")
    p.add_argument("--divergence", default="forward_kl", choices=["forward_kl", "reverse_kl", "taid"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--max-naive-gib", type=float, default=None,
                   help="skip naive runs whose predicted peak exceeds this (default: 60%% of available RAM)")
    p.add_argument("--no-append", action="store_true", help=f"print only; do not append to {RESULTS.name}")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker:
        print(json.dumps(worker(json.loads(args._worker))))
        return

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    limit_gib = args.max_naive_gib if args.max_naive_gib is not None else 0.6 * _available_gib()
    base = {"vocab": args.vocab, "student_hidden": args.student_hidden, "teacher_hidden": args.teacher_hidden,
            "divergence": args.divergence, "dtype": args.dtype, "threads": args.threads, "device": device}
    rows = []  # (method, N, chunk, result or None, note)
    naive_points: list[tuple[int, float]] = []
    for n in sorted(set(args.compare_tokens) | {args.tokens}):
        fit = _fit_line(naive_points)
        predicted = (fit[0] + fit[1] * n) / 1024 if fit else None
        if predicted is not None and predicted > limit_gib:
            note = f"skipped: predicted {predicted:.1f} GiB > limit {limit_gib:.1f} GiB (linear fit)"
            rows.append(("naive", n, None, {"peak_extra_mib": predicted * 1024, "seconds": None}, note))
        else:
            print(f"naive   N={n}", flush=True)
            res = _measure({**base, "tokens": n, "method": "naive", "chunk_size": None})
            rows.append(("naive", n, None, res, "" if res else "failed"))
            if res:
                naive_points.append((n, res["peak_extra_mib"]))
        for chunk in args.chunk_sizes:
            print(f"chunked N={n} chunk={chunk}", flush=True)
            res = _measure({**base, "tokens": n, "method": "chunked", "chunk_size": chunk})
            rows.append(("chunked", n, chunk, res, "" if res else "failed"))

    naive_loss = {n: r["loss"] for m, n, _, r, note in rows if m == "naive" and r and not note}
    lines = ["| method | N tokens | chunk | extra peak MiB | seconds | loss − naive loss | note |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for method, n, chunk, res, note in rows:
        peak = f"{res['peak_extra_mib']:,.0f}" if res else "—"
        if note.startswith("skipped"):
            peak = f"~{peak} (extrapolated)"
        secs = f"{res['seconds']:.2f}" if res and res["seconds"] is not None else "—"
        diff = f"{res['loss'] - naive_loss[n]:.1e}" if res and "loss" in res and n in naive_loss else "—"
        lines.append(f"| {method} | {n} | {chunk or '—'} | {peak} | {secs} | {diff} | {note} |")
    table = "\n".join(lines)
    command = "OMP_NUM_THREADS={} PYTHONPATH=. python benchmarks/loss_memory.py {}".format(
        os.environ.get("OMP_NUM_THREADS", "unset"), " ".join(sys.argv[1:] if argv is None else argv)).rstrip()
    how = ("torch.cuda.max_memory_allocated − allocated before the call" if device == "cuda" else
           "fresh subprocess per row; ru_maxrss at the end − RSS before the call")
    section = (f"### Loss memory: chunked vs naive compound loss ({dt.date.today().isoformat()})\n\n"
               f"- command: `{command}`\n- machine: {_machine(device, args.threads)}\n"
               f"- setup: V = {args.vocab:,}, H student {args.student_hidden} / teacher {args.teacher_hidden}, "
               f"{args.dtype}, {args.divergence}, one forward + backward, random inputs, device {device}\n"
               f"- memory: {how}; weights and inputs are not counted (student lm_head gradient is)\n\n{table}\n")
    print("\n" + section)
    if not args.no_append:
        _append_results(section)
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
