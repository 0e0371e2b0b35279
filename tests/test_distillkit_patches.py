"""`patches/`: the four DistillKit fixes as a patch series for a fork. The series is applied with `git apply`,
in order, to a copy of a DistillKit a61c2e7 checkout, and the defect checks then run through plain
`distillkit` (its own `DistillationTrainer`, none of our code in the loss path) on the patched copy.

The checkout is `$DISTILLKIT_SRC`, else the source folder of an editable DistillKit install; without one
(CI has none) the test skips, saying so.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATCHES = sorted((ROOT / "patches").glob("*.patch"))


def test_series_is_documented():
    """Four patches, each with the header the README promises, each named in patches/README.md."""
    assert [p.name[:4] for p in PATCHES] == ["0001", "0002", "0003", "0004"]
    readme = (ROOT / "patches" / "README.md").read_text()
    for patch in PATCHES:
        head = patch.read_text().split("\ndiff --git", 1)[0]
        for needle in ("Defect (", "a61c2e7", "Licence: DistillKit is Apache-2.0", "Runtime override",
                       "distillkit_scd/integrations/distillkit_fixes.py", "Tests:"):
            assert needle in head, (patch.name, needle)
        assert patch.name in readme


def distillkit_checkout() -> Path:
    """A DistillKit source checkout (`$DISTILLKIT_SRC` or an editable install's folder), else skip."""
    env = os.environ.get("DISTILLKIT_SRC")
    if env:
        path = Path(env)
    else:
        spec = importlib.util.find_spec("distillkit")
        if spec is None or spec.origin is None:
            pytest.skip("no DistillKit checkout: set DISTILLKIT_SRC to a clone of arcee-ai/DistillKit at a61c2e7 "
                        "(or pip install -e it)")
        path = Path(spec.origin).parents[1]
    if not (path / "distillkit" / "trainer.py").is_file() or not (path / "pyproject.toml").is_file():
        pytest.skip(f"{path} is not a DistillKit source checkout (installed as a wheel?); set DISTILLKIT_SRC")
    if 'version = "1.0.0"' not in (path / "pyproject.toml").read_text():
        pytest.skip(f"{path} is not DistillKit 1.0.0; the series targets commit a61c2e7")
    return path


_CHECKS = r'''
import sys, torch
patched, teacher_dir, student_dir, data_dir = sys.argv[1:5]
import distillkit, trl, transformers
assert distillkit.__file__.startswith(patched), distillkit.__file__
from distillkit.configuration import DistillationRunConfig
from distillkit.main import load_data, load_student_model, load_tokenizer
from distillkit.signals import OnlineSignalSource
from distillkit.trainer import DistillationTrainer

config = DistillationRunConfig.model_validate({
    "model": student_dir, "teacher": {"kind": "hf", "path": teacher_dir}, "sequence_length": 64,
    "dataset": {"train_dataset": {"disk_path": data_dir}}, "output_path": data_dir + "-out",
    "use_flash_attention": False, "project_name": "",
    "loss_functions": [{"function": "cross_entropy", "weight": 0.5}, {"function": "kl", "weight": 0.5, "temperature": 1.0}],
    "training_args": {"per_device_train_batch_size": 2, "report_to": [], "use_cpu": True, "bf16": False}})
tok = load_tokenizer(config)
train, _ = load_data(config.dataset, tok)
vocab = len(tok)
seen_prepare = []
import trl.models.utils
trl.models.utils.prepare_deepspeed = lambda model, acc: seen_prepare.append(model) or model
real_init = trl.SFTTrainer.__init__
def init(self, *a, **k):  # (c): report DeepSpeed on right after the Trainer's own set-up
    real_init(self, *a, **k)
    self._ds_probe = True
class Probe(DistillationTrainer):
    is_deepspeed_enabled = property(lambda self: getattr(self, "_ds_probe", False), lambda self, v: None)
trl.SFTTrainer.__init__ = init
teacher = transformers.AutoModelForCausalLM.from_pretrained(teacher_dir)
args = trl.SFTConfig(**config.training_args, max_length=64, output_dir=config.output_path)
probe = Probe(model=load_student_model(config, vocab), config=config, true_vocab_size=vocab, train_dataset=train,
              signal_source=OnlineSignalSource(teacher, vocab_size=vocab), args=args, processing_class=tok)
print("C_PREPARED", seen_prepare == [teacher])
trl.SFTTrainer.__init__ = real_init
trainer = DistillationTrainer(model=load_student_model(config, vocab), config=config, true_vocab_size=vocab,
                              signal_source=OnlineSignalSource(teacher, vocab_size=vocab), train_dataset=train,
                              args=args, processing_class=tok)
model = trainer.model.train()
batch = next(iter(trainer.get_train_dataloader()))
labels = batch["labels"].clone()
labels[:, :4] = -100
batch["labels"] = labels

# (a) DistillKit's KL term against a float64 loop over next-token positions.
with torch.no_grad():
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
ref, n = 0.0, 0
for b in range(labels.shape[0]):
    for s in range(labels.shape[1] - 1):
        if labels[b, s + 1] != -100:
            lq = torch.log_softmax(out.logits[b, s].double(), -1)
            lp = torch.log_softmax(t_logits[b, s].double(), -1)
            ref, n = ref + float((lp.exp() * (lp - lq)).sum()), n + 1
items, real_item = [], torch.Tensor.item
torch.Tensor.item = lambda self: items.append(1) or real_item(self)
n_log = len(trainer.state.log_history)
with torch.no_grad():
    trainer.total_distillation_loss(out, batch)
    trainer.total_distillation_loss(out, batch)
torch.Tensor.item = real_item
kl = float(trainer._distill_sums["distillation_loss/2_kl"]) / 2
print("A_KL", kl, ref / n)
# (d) no .item() and no log entry per micro-batch; the mean arrives on the training log line.
print("D_ITEMS", len(items), len(trainer.state.log_history) - n_log)
trainer.log({"loss": 1.0})
print("D_LOGGED", trainer.state.log_history[-1]["distillation_loss/2_kl"])

# (b) a packed row: the second sample's logits equal those of the sample alone, for both models.
model.eval()
a, b2 = (torch.tensor(x) for x in tok(["What is 1 plus 1? It is 2.", "Say hello to the model now"])["input_ids"])
ids = torch.cat([a, b2]).unsqueeze(0)
pos = torch.cat([torch.arange(len(a)), torch.arange(len(b2))]).unsqueeze(0)
packed = {"input_ids": ids, "position_ids": pos, "labels": ids.clone()}
with torch.no_grad():
    _, s_out = trainer.compute_loss(model, dict(packed), return_outputs=True)
    t_out = trainer.signal_source.get_signal(packed).logits
    alone_s = model(input_ids=b2.unsqueeze(0)).logits[0]
    alone_t = teacher(input_ids=b2.unsqueeze(0)).logits[0]
second = slice(len(a), None)
print("B_STUDENT", float((s_out.logits[0, second] - alone_s).abs().max()))
print("B_TEACHER", float((t_out[0, second] - alone_t).abs().max()))
'''


def _values(stdout: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in stdout.splitlines() if line[:2] in ("A_", "B_", "C_", "D_")}


def test_patch_series_fixes_plain_distillkit(tiny_pair, tmp_path):
    """`git apply` of 0001..0004 in order to a copy of DistillKit a61c2e7 succeeds, and plain `distillkit` on
    the patched copy then: (a) computes its KL over next-token positions (float64 reference), (b) gives a
    packed row's second sample the logits it has alone (student and teacher), (c) DeepSpeed-prepares the
    online teacher, (d) makes no `.item()` call or log entry per micro-batch and logs the mean on the log
    line. (The same checks on unpatched DistillKit fail: the defect tests in test_distillkit_integration.py.)"""
    source = distillkit_checkout()
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    import datasets

    data = tmp_path / "data"
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"It is {2 * i}."}]} for i in range(4)]
    datasets.Dataset.from_list(rows).save_to_disk(str(data))
    copy = tmp_path / "patched"
    shutil.copytree(source / "distillkit", copy / "distillkit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for patch in PATCHES:
        done = subprocess.run(["git", "apply", "--verbose", str(patch)], cwd=copy, capture_output=True, text=True,
                              env={**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path)})  # not inside a repo
        assert done.returncode == 0, f"{patch.name} does not apply:\n{done.stderr}"
    env = {**os.environ, "PYTHONPATH": f"{copy}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    out = subprocess.run([sys.executable, "-c", _CHECKS, str(copy), str(tiny_pair[0]), str(tiny_pair[1]),
                          str(data)], capture_output=True, text=True, env=env, timeout=600)
    v = _values(out.stdout)
    assert out.returncode == 0, out.stderr[-3000:]
    kl, ref = map(float, v["A_KL"])
    assert kl == pytest.approx(ref, rel=1e-5)
    assert float(v["B_STUDENT"][0]) < 1e-4 and float(v["B_TEACHER"][0]) < 1e-4
    assert v["C_PREPARED"] == ["True"]
    assert v["D_ITEMS"] == ["0", "0"] and float(v["D_LOGGED"][0]) == pytest.approx(kl, rel=1e-5)
