"""Distillation step time against its floor: (student SFT step + one teacher forward) on the same batches.

    python benchmarks/step_time.py --help
    python benchmarks/step_time.py --shapes tiny llama-small --steps 20      # CPU
    python benchmarks/step_time.py --shapes llama-1b-3b --dtype bfloat16     # GPU (random weights)

For each shape it builds random-weight Llama student and teacher, then times, on the same batches and
in the same process, with `DistillationTrainer.training_step` (forward, loss, backward) + optimizer step:
  sft    the student trained with CE only (no teacher),
  fwd    the teacher's forward pass alone (decoder + lm_head at label positions, no grad),
  td / taid / aw   a full distillation step.
ratio = method / (sft + fwd): 1.0 is the floor. Prints a table and appends it to benchmarks/RESULTS.md.
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


def build(shape: str, dtype, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    models = []
    for i, kw in enumerate(SHAPES[shape]):
        torch.manual_seed(i)
        cfg = LlamaConfig(vocab_size=VOCAB[shape], max_position_embeddings=2048, tie_word_embeddings=False,
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
    from distillkit_scd.models import build_tiny_tokenizer

    if not _TOKENIZER:
        _TOKENIZER.append(build_tiny_tokenizer())
    return _TOKENIZER[0]


def make_trainer(student, teacher, method: str, out: str):
    from trl import SFTConfig

    from distillkit_scd.losses import LossSpec, TAIDState
    from distillkit_scd.trainer import DistillationTrainer

    args = SFTConfig(output_dir=out, report_to="none", per_device_train_batch_size=1, max_steps=1,
                     remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True},
                     bf16=student.dtype == torch.bfloat16, use_cpu=not torch.cuda.is_available())
    from datasets import Dataset

    dummy = Dataset.from_list([{"input_ids": [0, 1], "labels": [0, 1]}])
    spec = LossSpec(divergence="taid" if method == "taid" else "forward_kl", alpha=0.0 if method == "sft" else 0.5)
    trainer = DistillationTrainer(model=student, args=args, train_dataset=dummy, processing_class=_tokenizer(),
                                  teacher_model=None if method == "sft" else teacher, loss_spec=spec,
                                  use_aw=method == "aw", taid_state=TAIDState() if method == "taid" else None)
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    return trainer


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(fn, batches, device, warmup: int = 2) -> float:
    for b in batches[:warmup]:
        fn(b)
    sync(device)
    times = []
    for b in batches[warmup:]:
        start = time.perf_counter()
        fn(b)
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(shape: str, steps: int, batch: int, length: int, dtype, device) -> dict:
    from distillkit_scd.losses import label_positions

    student, teacher = build(shape, dtype, device)
    data = [{k: v.to(device) for k, v in b.items()} for b in batches(VOCAB[shape], batch, length, length // 2, steps)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("sft", "td", "taid", "aw"):
            trainer = make_trainer(student, teacher, method, tmp)

            def step(b, trainer=trainer):
                trainer.model.train()
                loss = trainer.compute_loss(trainer.model, dict(b))
                loss.backward()
                trainer.optimizer.step()
                trainer.optimizer.zero_grad(set_to_none=True)

            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            results[method] = time_steps(step, data, device)
            if device.type == "cuda":
                results[f"{method}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        teacher.eval()

        @torch.no_grad()
        def forward(b):
            hidden = teacher.get_decoder()(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                           position_ids=b["position_ids"]).last_hidden_state
            idx, _ = label_positions(b["labels"])
            teacher.get_output_embeddings()(hidden.reshape(-1, hidden.shape[-1])[idx])

        results["fwd"] = time_steps(forward, data, device)
    floor = results["sft"] + results["fwd"]
    results.update({f"{m}_ratio": results[m] / floor for m in ("td", "taid", "aw")})
    results["tokens_per_s_td"] = batch * length / results["td"]
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["tiny", "llama-small"], choices=sorted(SHAPES))
    parser.add_argument("--steps", type=int, default=12, help="timed steps per method (after 2 warm-up)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128, help="tokens per row (half prompt, half labels)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    header = "| shape | sft step (ms) | teacher fwd (ms) | floor (ms) | TD (ms) | TAID (ms) | AW (ms) | TD/floor | TAID/floor | AW/floor |"
    lines = [header, "|---" * 10 + "|"]
    extra: list[str] = []
    for shape in args.shapes:
        r = measure(shape, args.steps + 2, args.batch, args.length, dtype, device)
        ms = {k: 1000 * v for k, v in r.items() if not k.endswith(("ratio", "gib", "_s_td"))}
        lines.append(f"| {shape} | {ms['sft']:.1f} | {ms['fwd']:.1f} | {ms['sft'] + ms['fwd']:.1f} | {ms['td']:.1f} | "
                     f"{ms['taid']:.1f} | {ms['aw']:.1f} | {r['td_ratio']:.3f} | {r['taid_ratio']:.3f} | {r['aw_ratio']:.3f} |")
        extra.append(f"{shape}: TD {r['tokens_per_s_td']:.0f} tokens/s"
                     + ("".join(f"; peak {m} {r[f'{m}_peak_gib']:.2f} GiB" for m in ("sft", "td", "taid", "aw"))
                        if device.type == "cuda" else ""))
    table = "\n".join(lines) + "\n\n" + "\n".join(f"- {e}" for e in extra)
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
                  f"median of {args.steps} steps)\n\n{table}\n")
        path = Path(__file__).with_name("RESULTS.md")
        with path.open("a", encoding="utf-8") as fh:
            fh.write(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
