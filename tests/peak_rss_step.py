"""Measure the resident-memory growth of two real distillation steps (run as a subprocess by test_plan.py).

Usage: python tests/peak_rss_step.py JSON  → prints {"growth": bytes, ...}. JSON holds the student and
teacher LlamaConfig kwargs, batch, length, prompt and chunk_size. The growth is the process's peak RSS
(`ru_maxrss`, the kernel's own high-water mark: every transient buffer counts) minus its RSS after the
imports, so it covers what `plan` estimates: weights, gradients, AdamW state, activations, loss buffers
and the teacher. torch has no CPU allocator statistics, and tracemalloc does not see torch's buffers.
"""

import json
import os
import resource
import sys
import tempfile

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM
from trl import SFTConfig

from distillkit_scd.losses import LossSpec
from distillkit_scd.models.loading import build_tiny_tokenizer
from distillkit_scd.training.trainer import DistillationTrainer


def rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(spec: dict) -> dict:
    torch.set_num_threads(1)
    tokenizer = build_tiny_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, report_to="none", per_device_train_batch_size=1, max_steps=1, use_cpu=True,
                         remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True}, bf16=False)
        dummy = Dataset.from_list([{"input_ids": [0, 1], "labels": [0, 1]}])
        base = rss()
        models = []
        for seed, kw in enumerate((spec["student"], spec["teacher"])):
            torch.manual_seed(seed)
            models.append(LlamaForCausalLM(LlamaConfig(max_position_embeddings=512, tie_word_embeddings=False, **kw)))
        trainer = DistillationTrainer(model=models[0], args=args, train_dataset=dummy, processing_class=tokenizer,
                                      teacher_model=models[1], loss_spec=LossSpec(chunk_size=spec["chunk_size"]))
        trainer.create_optimizer_and_scheduler(num_training_steps=10)
        batch, length, vocab = spec["batch"], spec["length"], spec["student"]["vocab_size"]
        gen = torch.Generator().manual_seed(0)
        trainer.model.train()
        for _ in range(2):  # the second step runs with the AdamW state allocated
            ids = torch.randint(0, vocab, (batch, length), generator=gen)
            labels = ids.clone()
            labels[:, :spec["prompt"]] = -100
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
                      "position_ids": torch.arange(length).expand(batch, -1).contiguous()}
            trainer.compute_loss(trainer.model, inputs).backward()
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"base": base, "peak": peak, "growth": peak - base, "optimizer": type(trainer.optimizer).__name__}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
