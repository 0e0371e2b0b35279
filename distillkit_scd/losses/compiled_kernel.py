"""The chunk's element-wise loss work compiled by torch.compile, on fixed row tiles so it compiles once.

`chunk_kernel.chunk_terms` (eager) makes ~7 passes over the (c, V) block per chunk, each streaming the whole
block through memory. Inductor fuses the same math (teacher log-softmax, the KL/TAID/reverse-KL terms, CE and
the closed-form gradient) into one generated kernel whose passes run row by row. It compiles per input shape,
and the chunk's row count changes every micro-batch (label tokens vary; the last chunk is short), so the
kernel runs on tiles of a fixed row count (`tile_rows`): a chunk is cut into tiles, the last one padded with
zero logits (weight 0, target 0) whose outputs are dropped. One shape per (V, dtype, divergence, T ≠ 1)
compiles once per process (`dynamic=False`); inductor's on-disk FX-graph cache makes later processes fast.
On CPU the tiles are a few rows (~2 MiB), so the kernel's passes over a tile run in the core's L2 cache
instead of streaming the whole (c, V) block through memory once per pass as the eager kernel does.

Only the training path with a teacher is compiled (gradient needed); CE-only and no-grad chunks stay eager.
If compilation fails (no C++ compiler, an inductor error), one warning is logged and the eager kernel runs
for the rest of the process. Values and gradients equal the float64 reference (`tests/test_chunk_kernel.py`).
"""

from __future__ import annotations

import logging
import time

import torch

from distillkit_scd.losses.chunk_kernel import tile_rows, tiled_chunk_terms

logger = logging.getLogger(__name__)

_COMPILED: dict[tuple, object] = {}
_FAILED: list[str] = []  # the reason compilation failed in this process, if it did
COMPILE_SECONDS: dict[tuple, float] = {}  # (divergence, T ≠ 1, V, dtype, device) → seconds its compile took


def resolve_compile_loss(setting: str | bool, device) -> bool:
    """`distill.compile_loss` → whether to compile: auto = on CUDA only (CPU runs and tests pay no compile)."""
    if setting in ("auto", None):
        return torch.device(device).type == "cuda"
    if isinstance(setting, bool):
        return setting
    if setting in ("true", "false"):
        return setting == "true"
    raise ValueError(f"compile_loss: expected 'auto', true or false, got {setting!r}")


def _tile_math(z, teacher, y, w, scalars, divergence: str, tempered: bool):
    """Per-row divergence (× T²) and CE of one tile; writes d(Σ w·D + (1−w)·CE)/dz into `z`."""
    temp, t = scalars[0], scalars[1]
    if divergence == "taid":
        teacher = t * teacher + (1.0 - t) * z  # p_t's logits: t·z_t + (1−t)·stopgrad(z_s)
    log_q1 = torch.log_softmax(z, -1)
    ce = -log_q1.gather(1, y.unsqueeze(1)).squeeze(1)
    scale = temp if tempered else 1.0
    log_q = torch.log_softmax(z / temp, -1) if tempered else log_q1
    log_p = torch.log_softmax(teacher / temp, -1) if tempered else torch.log_softmax(teacher, -1)
    q = log_q.exp()
    wc = w.unsqueeze(1)
    if divergence == "reverse_kl":
        d = log_q - log_p
        raw = (q * d).sum(-1)
        g_div = (wc * scale) * q * (d - raw.unsqueeze(1))
    else:
        p = log_p.exp()
        raw = (p * (log_p - log_q)).sum(-1)
        g_div = (wc * scale) * (q - p)
    q1 = log_q1.exp() if tempered else q
    onehot = torch.arange(z.shape[1], device=z.device) == y.unsqueeze(1)
    grad = (1.0 - wc) * (q1 - onehot.to(z.dtype)) + g_div
    z.copy_(grad)
    return raw * (scale * scale), ce


def _compiled(divergence: str, tempered: bool, cols: int, dtype, device):
    """The compiled tile function, compiled and run once on a zero tile before it touches real logits, so a
    compile failure leaves the chunk's buffers intact for the eager fallback."""
    key = (divergence, tempered, cols, dtype, str(device))
    if key not in _COMPILED:
        def tile(z, teacher, y, w, scalars):
            return _tile_math(z, teacher, y, w, scalars, divergence, tempered)

        start = time.perf_counter()
        fn = torch.compile(tile, dynamic=False, fullgraph=True)
        pz, pt, py, pw = _pad(cols, dtype, device)
        for buf in (pz, pt, py, pw):
            buf.zero_()
        fn(pz, pt, py, pw, torch.ones(2, dtype=dtype, device=device))
        COMPILE_SECONDS[key] = time.perf_counter() - start
        _COMPILED[key] = fn
    return _COMPILED[key]


_PADS: dict[tuple, tuple] = {}


def _pad(cols: int, dtype, device):
    """One reused padded tile (logits, teacher, targets, weights) per (V, dtype, device): a chunk's short
    last tile is copied into it. Slices of one buffer, like the chunk's tiles, so both hit one compiled graph."""
    key = (cols, dtype, str(device))
    if key not in _PADS:
        n = tile_rows(cols, dtype, device)
        rows = torch.zeros(2, n, cols, dtype=dtype, device=device)
        _PADS[key] = (rows[0], rows[1], torch.zeros(n, dtype=torch.long, device=device),
                      torch.zeros(n, dtype=dtype, device=device))
    return _PADS[key]


def compiled_chunk_terms(z: torch.Tensor, teacher: torch.Tensor | None, targets: torch.Tensor, w: torch.Tensor,
                         divergence: str, temperature: float, t: float, need_grad: bool, spare: torch.Tensor):
    """`chunk_terms` with the same arguments and results, through the compiled tile kernel where it applies."""
    if teacher is None or not need_grad or _FAILED:
        return tiled_chunk_terms(z, teacher, targets, w, divergence, temperature, t, need_grad, spare)
    try:
        fn = _compiled(divergence, temperature != 1.0, z.shape[1], z.dtype, z.device)
    except Exception as err:  # noqa: BLE001 - any inductor/compiler failure: fall back, say so once
        _FAILED.append(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        logger.warning("distill.compile_loss: torch.compile of the loss kernel failed (%s); using the eager "
                       "kernel for the rest of this process", _FAILED[0])
        return tiled_chunk_terms(z, teacher, targets, w, divergence, temperature, t, need_grad, spare)
    return _run_tiles(fn, z, teacher, targets, w, temperature, t)


def _run_tiles(fn, z, teacher, targets, w, temperature, t):
    scalars = torch.tensor([temperature, t], dtype=z.dtype, device=z.device)  # tensors: no recompile per t
    c, cols = z.shape
    step = tile_rows(cols, z.dtype, z.device)
    div, ce = torch.empty(c, dtype=z.dtype, device=z.device), torch.empty(c, dtype=z.dtype, device=z.device)
    full = c - c % step
    for s in range(0, full, step):
        r = slice(s, s + step)
        div[r], ce[r] = fn(z[r], teacher[r], targets[r], w[r], scalars)
    if full < c:  # the short last tile: padded rows are zero logits with weight 0; their outputs are dropped
        n = c - full
        pz, pt, py, pw = _pad(cols, z.dtype, z.device)
        for buf, src in ((pz, z), (pt, teacher), (py, targets), (pw, w)):
            buf[:n].copy_(src[full:])
            buf[n:].zero_()
        d, e = fn(pz, pt, py, pw, scalars)
        div[full:], ce[full:] = d[:n], e[:n]
        z[full:].copy_(pz[:n])
    return div, ce, z
