"""Distillation step time against its floor: (student SFT step + one teacher forward) on the same batches.

    python benchmarks/step_time.py --help
    python benchmarks/step_time.py --shapes tiny llama-small --steps 20      # CPU
    python benchmarks/step_time.py --shapes llama-1b-3b --dtype bfloat16     # GPU (random weights)

For each shape it builds random-weight Llama student and teacher, then times, on the same batches and
in the same process, `DistillationTrainer.compute_loss` (forward, loss) + backward + optimizer step:
  sft    the student trained with CE only (no teacher),
  fwd    the teacher's forward pass alone (decoder + lm_head at label positions, no grad),
  td / taid / aw   a full distillation step with the online teacher (eager loss kernel),
  td_c / taid_c / aw_c   (`--compile-loss`) the same with `compile_loss=True` (the chunk's element-wise work
                   through torch.compile, `losses.compiled_kernel`); each graph's one-time compile is
                   reported separately (first call, inside the warm-up steps), never in the medians,
  cached           TD reading top-k teacher signals (`--top-k`) instead of running the teacher,
  liger            TD with `fused_loss="liger"` (Liger-Kernel's fused loss; where it is installed),
  distillkit       (`--distillkit`, where arcee-ai DistillKit is installed) DistillKit's own
                   `DistillationTrainer` with its default losses (0.5 CE + 0.5 KL, T = 1) — the same
                   objective as our TD at α = 0.5 — on the same models and batches.
ratio = method / (sft + fwd): 1.0 is the floor. Wall-clock medians make the table; the note under it gives
the same ratios in process CPU time (`time.process_time`, one thread: time this process ran, which the
other processes of a shared machine do not inflate by descheduling it; they still share its memory bandwidth). On CUDA it also reports peak memory per method and model
FLOPs utilisation (MFU: 6·P_student + 2·P_teacher FLOPs per token, non-embedding parameters, against
`--peak-tflops`). Prints a table and appends it to benchmarks/RESULTS.md.
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

from distillkit_scd.losses.liger_loss import liger_available

SHAPES = {  # name: (student, teacher) LlamaConfig kwargs
    "tiny": ({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
             {"hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4}),
    "llama-small": ({"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4},
                    {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 6, "num_attention_heads": 8}),
    "llama-1b-3b": ({"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8},
                    {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
                     "num_attention_heads": 24, "num_key_value_heads": 8}),
}
VOCAB = {"tiny": 1000, "llama-small": 32000, "llama-1b-3b": 128256}


def build(shape: str, dtype, device, vocab: int | None = None):
    from transformers import LlamaConfig, LlamaForCausalLM

    models = []
    for i, kw in enumerate(SHAPES[shape]):
        torch.manual_seed(i)
        cfg = LlamaConfig(vocab_size=vocab or VOCAB[shape], max_position_embeddings=2048, tie_word_embeddings=False,
                          **{"num_key_value_heads": kw["num_attention_heads"], **kw})
        models.append(LlamaForCausalLM(cfg).to(device=device, dtype=dtype))
    return models


def batches(vocab: int, batch: int, length: int, prompt: int, n: int, num_checkpoints: int = 2):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (batch, length), generator=g)
        labels = ids.clone()
        labels[:, :prompt] = -100
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
                    "position_ids": torch.arange(length).expand(batch, -1).contiguous(),
                    "aw": torch.rand(batch, num_checkpoints, generator=g)})
    return out


_TOKENIZER = []


def _tokenizer():
    """Any tokenizer satisfies SFTTrainer's constructor; the batches are pre-built token ids."""
    from distillkit_scd.models.loading import build_tiny_tokenizer

    if not _TOKENIZER:
        _TOKENIZER.append(build_tiny_tokenizer())
    return _TOKENIZER[0]


def make_trainer(student, teacher, method: str, out: str, compile_loss: bool = False):
    from trl import SFTConfig

    from distillkit_scd.losses import LossSpec, TAIDState
    from distillkit_scd.training.trainer import DistillationTrainer

    args = SFTConfig(output_dir=out, report_to="none", per_device_train_batch_size=1, max_steps=1,
                     remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True},
                     bf16=student.dtype == torch.bfloat16, use_cpu=not torch.cuda.is_available())
    from datasets import Dataset

    dummy = Dataset.from_list([{"input_ids": [0, 1], "labels": [0, 1]}])
    spec = LossSpec(divergence="taid" if method == "taid" else "forward_kl", alpha=0.0 if method == "sft" else 0.5)
    trainer = DistillationTrainer(model=student, args=args, train_dataset=dummy, processing_class=_tokenizer(),
                                  teacher_model=None if method == "sft" else teacher, loss_spec=spec,
                                  use_aw=method == "aw", taid_state=TAIDState() if method == "taid" else None,
                                  fused_loss="liger" if method == "liger" else "none", compile_loss=compile_loss)
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    return trainer


def make_distillkit_trainer(student, teacher, out: str, length: int):
    """DistillKit's own trainer as `distillkit.main` builds it, with its default loss list."""
    from datasets import Dataset
    from distillkit.configuration import DistillationRunConfig
    from distillkit.signals import OnlineSignalSource
    from distillkit.trainer import DistillationTrainer as DKTrainer
    from trl import SFTConfig

    vocab = student.config.vocab_size
    config = DistillationRunConfig.model_validate({
        "model": "random-student", "teacher": {"kind": "hf", "path": "random-teacher"},
        "dataset": {"train_dataset": {"disk_path": out}}, "sequence_length": length, "output_path": out,
        "use_flash_attention": False, "project_name": "",
        "loss_functions": [{"function": "cross_entropy", "weight": 0.5},
                           {"function": "kl", "weight": 0.5, "temperature": 1.0}]})
    args = SFTConfig(output_dir=out, report_to="none", per_device_train_batch_size=1, max_steps=1,
                     remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True},
                     bf16=student.dtype == torch.bfloat16, use_cpu=not torch.cuda.is_available())
    dummy = Dataset.from_list([{"input_ids": [0, 1], "labels": [0, 1]}])
    trainer = DKTrainer(model=student, config=config, signal_source=OnlineSignalSource(teacher, vocab_size=vocab),
                        true_vocab_size=vocab, args=args, train_dataset=dummy, processing_class=_tokenizer())
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    return trainer


class _BatchSignals:
    """Top-k teacher signals precomputed per benchmark batch, served like `signal_cache.SignalCache`."""

    def __init__(self, teacher, data, k: int):
        from distillkit_scd.losses import label_positions, topk_signal

        self.by_batch = {}
        with torch.no_grad():
            for i, b in enumerate(data):
                hidden = teacher.get_decoder()(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                               position_ids=b["position_ids"]).last_hidden_state
                idx, _ = label_positions(b["labels"])
                logits = teacher.get_output_embeddings()(hidden.reshape(-1, hidden.shape[-1])[idx]).float()
                self.by_batch[i] = topk_signal(logits, k)

    def for_rows(self, sample_indices: torch.Tensor, device=None):
        return self.by_batch[int(sample_indices[0]) // 10_000]


def method_names(compile_loss: bool, with_distillkit: bool) -> list[str]:
    """The timed methods besides `sft`, in table order."""
    return (["td", "taid", "aw"] + (["td_c", "taid_c", "aw_c"] if compile_loss else []) + ["cached"]
            + (["liger"] if liger_available() else []) + (["distillkit"] if with_distillkit else []))


def non_embedding_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)


GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}  # dense bf16


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(fn, batches, device, warmup: int = 2) -> tuple[float, float]:
    """(median wall seconds, median process CPU seconds) per call after `warmup` calls."""
    for b in batches[:warmup]:
        fn(b)
    sync(device)
    wall, cpu = [], []
    for b in batches[warmup:]:
        start, start_cpu = time.perf_counter(), time.process_time()
        fn(b)
        sync(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def time_interleaved(fns: dict, batches, device, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function (`name`: wall, `name_cpu`: process CPU time), calling them
    in turn on every batch (rotating the order): load from other processes then slows every method alike,
    so the ratios stay meaningful on a shared machine."""
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for n in names for k in (n, f"{n}_cpu")}
    for i, b in enumerate(batches):
        for n in names[i % len(names):] + names[:i % len(names)]:
            sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fns[n](b)
            sync(device)
            if i >= warmup:
                times[n].append(time.perf_counter() - start)
                times[f"{n}_cpu"].append(time.process_time() - start_cpu)
    return {n: statistics.median(t) for n, t in times.items()}


def profile_step(step, batch, device, rows: int = 15) -> str:
    """torch.profiler table of one step: where the time goes, by operator (self time)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step(batch)
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def measure(shape: str, steps: int, batch: int, length: int, dtype, device, top_k: int,
            with_distillkit: bool, profile: str | None = None, interleave: bool = False,
            vocab: int | None = None, compile_loss: bool = False) -> dict:
    """Seconds per step of every method and of the teacher forward (+ peak memory on CUDA).

    Sequential (default): each method in turn from the same initial weights, one optimizer per method
    alive at a time (peak memory per method is meaningful). Interleaved: all methods step in turn on each
    batch, sharing the student (its weights drift; step time does not depend on them).
    """
    from distillkit_scd.losses import label_positions

    student, teacher = build(shape, dtype, device, vocab)
    data = [{k: v.to(device) for k, v in b.items()}
            for b in batches(vocab or VOCAB[shape], batch, length, length // 2, steps)]
    for i, b in enumerate(data):  # row ids: batch i holds rows 10_000·i + r (the cached method's lookup)
        b["sample_index"] = torch.arange(batch, device=device) + 10_000 * i
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    methods = ["sft", *method_names(compile_loss, with_distillkit)]
    teacher.eval()

    @torch.no_grad()
    def forward(b):
        hidden = teacher.get_decoder()(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                       position_ids=b["position_ids"]).last_hidden_state
        idx, _ = label_positions(b["labels"])
        teacher.get_output_embeddings()(hidden.reshape(-1, hidden.shape[-1])[idx])

    def step_fn(method: str, tmp: str):
        if method == "distillkit":
            trainer = make_distillkit_trainer(student, teacher, tmp, length)
        else:
            base = {"cached": "td"}.get(method, method.removesuffix("_c"))
            trainer = make_trainer(student, teacher, base, tmp, compile_loss=method.endswith("_c"))
        if method == "cached":
            trainer.teacher_signals = [_BatchSignals(teacher, data, top_k)]

        def step(b):
            trainer.model.train()
            loss = trainer.compute_loss(trainer.model, dict(b))
            loss.backward()
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)

        return step

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if interleave:
            fns = {m: step_fn(m, tmp) for m in methods}
            results.update(time_interleaved({**fns, "fwd": forward}, data, device))  # compiles in the warm-up
            if profile:
                results["profile"] = profile_step(fns[profile], data[0], device)
        else:
            for method in methods:
                student.load_state_dict(initial)  # every method starts from the same weights
                step = step_fn(method, tmp)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                results[method], results[f"{method}_cpu"] = time_steps(step, data, device)
                if device.type == "cuda":
                    results[f"{method}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
                if method == profile:
                    results["profile"] = profile_step(step, data[0], device)
                del step
            results["fwd"], results["fwd_cpu"] = time_steps(forward, data, device)
    floor, floor_cpu = results["sft"] + results["fwd"], results["sft_cpu"] + results["fwd_cpu"]
    results.update({f"{m}_ratio": results[m] / floor for m in methods if m != "sft"})
    results.update({f"{m}_cpu_ratio": results[f"{m}_cpu"] / floor_cpu for m in methods if m != "sft"})
    if compile_loss:
        from distillkit_scd.losses.compiled_kernel import COMPILE_SECONDS

        results["compile_s"] = {f"{k[0]}{', T≠1' if k[1] else ''}": v for k, v in COMPILE_SECONDS.items()
                                if k[2] == student.config.vocab_size}
    tokens = batch * length
    results["tokens_per_s"] = {m: tokens / results[m] for m in methods}
    results["flops_per_token"] = {"student": 6 * non_embedding_params(student),
                                  "teacher": 2 * non_embedding_params(teacher)}
    return results


def mfu(results: dict, method: str, tokens: int, peak_tflops: float) -> float:
    """Model FLOPs utilisation of one step: student 6·P per token (+ teacher 2·P for online methods)."""
    f = results["flops_per_token"]
    online = ("td", "taid", "aw", "td_c", "taid_c", "aw_c", "liger", "distillkit")
    per_token = f["student"] + (f["teacher"] if method in online else 0)
    return per_token * tokens / results[method] / (peak_tflops * 1e12)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["tiny", "llama-small"], choices=sorted(SHAPES))
    parser.add_argument("--steps", type=int, default=12, help="timed steps per method (after 2 warm-up)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128, help="tokens per row (half prompt, half labels)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--top-k", type=int, default=64, help="k of the cached-signal method")
    parser.add_argument("--distillkit", action="store_true",
                        help="also time arcee-ai DistillKit's DistillationTrainer (must be installed)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="accelerator peak for MFU (default: known GPUs' dense bf16 peak; none on CPU)")
    parser.add_argument("--profile", default=None, choices=["sft", "td", "taid", "aw", "cached", "liger", "distillkit"],
                        help="also print a torch.profiler table of one step of this method (not recorded)")
    parser.add_argument("--interleave", action="store_true",
                        help="step all methods in turn on each batch (robust ratios on a shared machine; "
                             "no per-method peak memory)")
    parser.add_argument("--vocab", type=int, default=None,
                        help="vocabulary size of both models instead of the shape's (e.g. 128256 with --shapes "
                             "tiny: Llama 3's vocabulary, small hidden sizes, on CPU)")
    parser.add_argument("--compile-loss", action="store_true",
                        help="also time TD, TAID and AW with compile_loss=True (torch.compile of the loss kernel)")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in GPU_PEAK_TFLOPS.items() if k in name), None)
    methods = method_names(args.compile_loss, args.distillkit)
    labels = {"td": "TD", "taid": "TAID", "aw": "AW", "td_c": "TD compiled", "taid_c": "TAID compiled",
              "aw_c": "AW compiled", "cached": f"TD cached k={args.top_k}", "liger": "TD Liger",
              "distillkit": "DistillKit"}
    header = ("| shape | sft step (ms) | teacher fwd (ms) | floor (ms) | "
              + " | ".join(f"{labels[m]} (ms)" for m in methods) + " | "
              + " | ".join(f"{labels[m]}/floor" for m in methods) + " |")
    lines = [header, "|---" * (4 + 2 * len(methods)) + "|"]
    extra: list[str] = []
    tokens = args.batch * args.length
    for shape in args.shapes:
        r = measure(shape, args.steps + 2, args.batch, args.length, dtype, device, args.top_k, args.distillkit,
                    args.profile, args.interleave, args.vocab, args.compile_loss)
        if "profile" in r:
            print(f"profile of one {args.profile} step, shape {shape}:\n{r['profile']}")
        ms = {m: 1000 * r[m] for m in ["sft", "fwd", *methods]}
        name = shape if args.vocab is None else f"{shape} V={args.vocab:,}"
        lines.append(f"| {name} | {ms['sft']:.1f} | {ms['fwd']:.1f} | {ms['sft'] + ms['fwd']:.1f} | "
                     + " | ".join(f"{ms[m]:.1f}" for m in methods) + " | "
                     + " | ".join(f"{r[f'{m}_ratio']:.3f}" for m in methods) + " |")
        note = f"{name}: tokens/s " + ", ".join(f"{labels.get(m, m)} {v:,.0f}" for m, v in r["tokens_per_s"].items())
        if args.distillkit:
            note += f"; DistillKit / ours (TD) = {r['distillkit'] / r['td']:.2f}"
            if args.compile_loss:
                note += f", / ours (TD compiled) = {r['distillkit'] / r['td_c']:.2f}"
        note += "; process-CPU-time ratios to the floor: " + ", ".join(
            f"{labels[m]} {r[f'{m}_cpu_ratio']:.3f}" for m in methods)
        if args.compile_loss:
            note += "; one-time compile (s, not in the medians): " + (", ".join(
                f"{k} {v:.1f}" for k, v in r["compile_s"].items()) or "none (failed: eager ran)")
        if device.type == "cuda" and not args.interleave:
            note += "; peak GiB " + ", ".join(f"{labels.get(m, m)} {r[f'{m}_peak_gib']:.2f}" for m in ["sft", *methods])
        if peak:
            note += f"; MFU at {peak:.0f} TFLOP/s: " + ", ".join(
                f"{labels.get(m, m)} {100 * mfu(r, m, tokens, peak):.1f} %" for m in ["sft", *methods])
        extra.append(note)
    load = f"load average {load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    table = "\n".join(lines) + "\n\n" + "\n".join(f"- {e}" for e in extra) + f"\n- {load}"
    print(table)
    if not args.no_record:
        import transformers
        import trl

        machine = (torch.cuda.get_device_name() if device.type == "cuda" else
                   f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"torch threads {torch.get_num_threads()}")
        record = (f"\n### Step time vs floor — {datetime.date.today()} — {machine}\n\n"
                  f"`{' '.join(['python', *sys.argv])}` (batch {args.batch} × {args.length} tokens, {args.dtype}; "
                  f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; "
                  f"median of {args.steps} steps{', methods interleaved' if args.interleave else ''})\n\n{table}\n")
        path = Path(__file__).with_name("RESULTS.md")
        with path.open("a", encoding="utf-8") as fh:
            fh.write(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
