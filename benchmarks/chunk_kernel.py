"""One chunk's element-wise loss work (teacher log-softmax, KL, closed-form gradient): eager vs fused vs compiled.

    python benchmarks/chunk_kernel.py --rows 512 --vocab 32000 128256 [--compile]

Times, on the same (rows, V) logits and in turn (so machine load slows all alike), forward KL at T = 1 with
per-row weights:
  plain     the textbook eager expression (log_softmax ×2, exp, q − p, weighting; fresh tensors each call),
  fused     `chunk_kernel.chunk_terms` (~half the passes, three reused buffers),
  tiled     `chunk_kernel.tiled_chunk_terms` (what the eager loss runs on CPU: `fused` over row tiles),
  compiled  (`--compile`) `compiled_kernel.compiled_chunk_terms` (what `compile_loss: true` runs: inductor's
            C++ on CPU over fixed row tiles, so one compile per (V, dtype, divergence) whatever the chunk's
            rows); its one-time compile is reported separately (cold or warm: set TORCHINDUCTOR_CACHE_DIR
            to an empty folder for a cold one).
Times are process CPU time (`time.process_time`, one thread), which other processes on a shared machine do
not inflate by descheduling this one.
Prints a table and appends it to benchmarks/RESULTS.md unless --no-record.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from distillkit_scd.losses import compiled_kernel
from distillkit_scd.losses.chunk_kernel import chunk_terms, tiled_chunk_terms


def plain(z, zt, y, w):
    log_q = F.log_softmax(z, -1)
    log_p = F.log_softmax(zt, -1)
    p = log_p.exp()
    div = (p * (log_p - log_q)).sum(-1)
    ce = -log_q.gather(1, y.unsqueeze(1)).squeeze(1)
    onehot = F.one_hot(y, z.shape[1]).to(z.dtype)
    grad = (1 - w).unsqueeze(1) * (log_q.exp() - onehot) + w.unsqueeze(1) * (log_q.exp() - p)
    return div, ce, grad


def measure(rows: int, vocab: int, repeats: int, with_compile: bool) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    z, zt = torch.randn(rows, vocab, generator=g), torch.randn(rows, vocab, generator=g)
    y, w = torch.randint(0, vocab, (rows,), generator=g), torch.rand(rows, generator=g)
    bufs = [torch.empty_like(z) for _ in range(3)]

    def fused():
        bufs[0].copy_(z)  # the loss writes the logits into its buffer with the lm_head matmul
        bufs[1].copy_(zt)
        return chunk_terms(bufs[0], bufs[1], y, w, "forward_kl", 1.0, 1.0, True, bufs[2])

    def compiled():
        bufs[0].copy_(z)
        bufs[1].copy_(zt)
        return compiled_kernel.compiled_chunk_terms(bufs[0], bufs[1], y, w, "forward_kl", 1.0, 1.0, True, bufs[2])

    def tiled():
        bufs[0].copy_(z)
        bufs[1].copy_(zt)
        return tiled_chunk_terms(bufs[0], bufs[1], y, w, "forward_kl", 1.0, 1.0, True, bufs[2])

    fns = {"plain": lambda: plain(z, zt, y, w), "fused": fused, "tiled": tiled}
    out = {}
    if with_compile:
        compiled()
        if compiled_kernel._FAILED:
            raise SystemExit(f"torch.compile failed here: {compiled_kernel._FAILED[0]}")
        out["compile_s"] = compiled_kernel.COMPILE_SECONDS[("forward_kl", False, vocab, z.dtype, "cpu")]
        fns["compiled"] = compiled
    ref = plain(z, zt, y, w)
    for fn in fns.values():  # all variants agree before anything is timed
        got = fn()
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    times = {n: [] for n in fns}
    for i in range(repeats + 1):
        for n in list(fns)[i % len(fns):] + list(fns)[:i % len(fns)]:
            start = time.process_time()
            fns[n]()
            if i:
                times[n].append(time.process_time() - start)
    out.update({n: statistics.median(t) for n, t in times.items()})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 128256])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the plain expression")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    names = ["plain", "fused", "tiled"] + (["compiled"] if args.compile else [])
    lines = ["| rows × V | " + " | ".join(f"{n} (ms)" for n in names) + " | fused / plain | tiled / fused"
             + (" | compiled / plain | compiled / fused | compile (s)" if args.compile else "") + " |",
             "|---" * (len(names) + 3 + (3 if args.compile else 0)) + "|"]
    for vocab in args.vocab:
        r = measure(args.rows, vocab, args.repeats, args.compile)
        line = f"| {args.rows} × {vocab:,} | " + " | ".join(f"{1000 * r[n]:.1f}" for n in names)
        line += f" | {r['fused'] / r['plain']:.2f} | {r['tiled'] / r['fused']:.2f}"
        if args.compile:
            line += f" | {r['compiled'] / r['plain']:.2f} | {r['compiled'] / r['fused']:.2f} | {r['compile_s']:.1f}"
        lines.append(line + " |")
    table = "\n".join(lines) + f"\n\nload average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    print(table)
    if not args.no_record:
        record = (f"\n### One chunk's element-wise work — {datetime.date.today()} — torch {torch.__version__}, "
                  f"{torch.get_num_threads()} thread(s)\n\n`python {' '.join(['benchmarks/chunk_kernel.py', *sys.argv[1:]])}`"
                  f" (forward KL, T = 1, float32; process CPU time, median of {args.repeats}, variants interleaved)\n\n{table}\n")
        with Path(__file__).with_name("RESULTS.md").open("a", encoding="utf-8") as fh:
            fh.write(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
