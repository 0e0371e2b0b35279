"""DistillKit integration: settings schema, version guard, registration, our losses inside DistillKit
against float64 references, the four DistillKit defects on its original code path vs our fixes, and
short end-to-end runs through `main`.

Tests that need DistillKit skip when it is not importable (install it into the `distillkit` stack).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distillkit_scd.config import RecipeError
from distillkit_scd.integrations import distillkit as dk_int

ROOT = Path(__file__).resolve().parents[1]


def need_distillkit():
    return pytest.importorskip("distillkit", reason="DistillKit is not installed (not on PyPI: pip install a clone of arcee-ai/DistillKit)")


# --------------------------------------------------------------------------------------------------
# Without DistillKit.
# --------------------------------------------------------------------------------------------------


def test_package_imports_without_distillkit():
    """With `distillkit` unimportable, our integration module imports and `register` refuses clearly."""
    code = (
        "import sys; sys.modules['distillkit'] = None\n"
        "import distillkit_scd, distillkit_scd.integrations.distillkit as m\n"
        "try:\n    m.register()\nexcept m.DistillKitUnavailable as e:\n    print('REFUSED', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "REFUSED DistillKit is not installed" in out.stdout


def test_settings_defaults_and_strict_keys(tmp_path):
    """An absent section gives defaults; unknown keys and bad values name the field path and value."""
    s = dk_int.parse_settings(None)
    assert s.schedule.method == "none" and s.taid.t_start == 0.4
    with pytest.raises(RecipeError, match=r"cfg.yaml: unknown key distillkit_scd.schedule.steps; allowed keys"):
        dk_int.parse_settings({"schedule": {"steps": 3}}, source="cfg.yaml")
    with pytest.raises(RecipeError, match=r"unknown key distillkit_scd.alpha"):
        dk_int.parse_settings({"alpha": 0.5})
    with pytest.raises(RecipeError, match=r"unknown key distillkit_scd.taid.ce_weight"):  # DistillKit's weights mix CE
        dk_int.parse_settings({"taid": {"ce_weight": 0.5}})
    with pytest.raises(RecipeError, match=r"distillkit_scd.taid.beta: expected a number in \[0, 1\), got 1.0"):
        dk_int.parse_settings({"taid": {"beta": 1.0}})
    with pytest.raises(RecipeError, match=r"distillkit_scd.schedule.manifest: expected the teacher's manifest"):
        dk_int.parse_settings({"schedule": {"method": "cd", "steps_per_stage": 2}})
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(RecipeError, match=r"manifest.json: checkpoints: expected a non-empty list"):
        dk_int.parse_settings({"schedule": {"method": "scd", "manifest": str(tmp_path)}})
    with pytest.raises(RecipeError, match=r"schedule.steps_per_stage: expected an integer >= 1 for method scd"):
        dk_int.parse_settings({"schedule": {"method": "scd", "manifest": str(tmp_path)}}, check_files=False)
    with pytest.raises(RecipeError, match=r"distillkit_scd.labels: expected one of 'assistant', 'all'"):
        dk_int.parse_settings({"labels": "prompt"})
    with pytest.raises(RecipeError, match=r"schedule.method: expected one of 'none', 'fixed', 'cd', 'scd'"):
        dk_int.parse_settings({"schedule": {"method": "progressive"}})


def test_version_guard_refuses_unknown_versions():
    """Only the DistillKit versions the patches were written against are accepted."""
    assert dk_int.check_distillkit_version("1.0.0") == "1.0.0"
    with pytest.raises(dk_int.DistillKitUnavailable, match=r"distillkit 1.1.0 is installed; .* supports 1.0.0"):
        dk_int.check_distillkit_version("1.1.0")


# --------------------------------------------------------------------------------------------------
# Registration and our loss classes.
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registered():
    need_distillkit()
    dk_int.register()
    from distillkit_scd.integrations import distillkit_fixes

    return distillkit_fixes


def test_register_extends_enum_and_loss_list(registered):
    """After `register`, DistillKit's own config and factory accept and build our loss names."""
    from distillkit.configuration import LossFunction, LossFunctionConfig
    from distillkit.trainer import create_loss_func

    expected = {"scd_aw_kl": registered.AWKLLoss, "taid": registered.TAIDLoss, "reverse_kl": registered.ReverseKLLoss}
    for name, cls in expected.items():
        cfg = LossFunctionConfig.model_validate({"function": name, "weight": 1.0, "temperature": 2.0})
        assert cfg.function is LossFunction(name)
        loss = create_loss_func(cfg)
        assert type(loss) is cls and loss.spec.temperature == 2.0
    assert LossFunction("kl").value == "kl"  # DistillKit's own members untouched
    dk_int.register()  # idempotent
    assert [m.value for m in LossFunction].count("taid") == 1
    with pytest.raises(ValueError, match=r"loss_functions: taid: unsupported option\(s\) \['margin'\]"):
        create_loss_func(LossFunctionConfig(function="taid", weight=1.0, margin=0.1))


def _ref_losses(student, teacher, targets, segments, temperature, t):
    """Float64 per-position loops: token-mean forward KL, reverse KL, TAID KL and the AW compound loss."""
    s64, t64 = student.double(), teacher.double()
    rows = [(b, p) for b in range(targets.shape[0]) for p in range(targets.shape[1]) if targets[b, p] != -100]
    kl = rkl = taid = 0.0
    ce_s, ce_t, kls = {}, {}, []
    for b, p in rows:
        log_q = torch.log_softmax(s64[b, p] / temperature, -1)
        log_p = torch.log_softmax(t64[b, p] / temperature, -1)
        kl_bp = (log_p.exp() * (log_p - log_q)).sum() * temperature**2
        kl = kl + kl_bp
        rkl = rkl + (log_q.exp() * (log_q - log_p)).sum() * temperature**2
        log_pt = torch.log_softmax((1 - t) * s64[b, p].detach() / temperature + t * t64[b, p] / temperature, -1)
        taid = taid + (log_pt.exp() * (log_pt - log_q)).sum() * temperature**2
        y = int(targets[b, p])
        seg = int(segments[b, p])
        ce = -torch.log_softmax(s64[b, p], -1)[y]
        ce_s[seg] = ce_s.get(seg, 0.0) + float(ce.detach())
        ce_t[seg] = ce_t.get(seg, 0.0) + float(-torch.log_softmax(t64[b, p], -1)[y])
        kls.append((seg, kl_bp, ce))
    aw = sum(ce_s[g] / (ce_s[g] + ce_t[g]) * k + (1 - ce_s[g] / (ce_s[g] + ce_t[g])) * c for g, k, c in kls)
    n = len(rows)
    return {"reverse_kl": rkl / n, "taid": taid / n, "scd_aw_kl": aw / n, "kl": kl / n}


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_our_losses_match_float64_references(registered, temperature):
    """Each registered loss equals a float64 loop reference on odd shapes (values and gradients);
    packed segments give each sample its own AW."""
    from distillkit.signals import DenseSignal
    from transformers.modeling_outputs import CausalLMOutput

    gen = torch.Generator().manual_seed(0)
    student = torch.randn(3, 7, 13, generator=gen)
    teacher = torch.randn(3, 7, 13, generator=gen) * 2
    targets = torch.randint(0, 13, (3, 7), generator=gen)
    targets[0, :3] = -100
    targets[2, 5:] = -100
    segments = torch.tensor([[0] * 7, [1] * 3 + [2] * 4, [3] * 7])  # row 1 packs two samples
    t = 0.55
    for cls in (registered.ReverseKLLoss, registered.TAIDLoss, registered.AWKLLoss):
        loss_fn = cls(temperature=temperature)
        loss_fn.context = registered.BatchContext(targets=targets, segments=segments, taid_t=t)
        leaf = student.clone().requires_grad_(True)
        signal = DenseSignal(logits=teacher, generation_temperature=1.0, hidden_states=None, vocab_size=13)
        got = loss_fn(CausalLMOutput(logits=leaf), signal, mask=(targets != -100).unsqueeze(-1))
        (grad,) = torch.autograd.grad(got, leaf)
        ref_leaf = student.double().requires_grad_(True)
        ref = _ref_losses(ref_leaf, teacher, targets, segments, temperature, t)[cls.name()]
        (ref_grad,) = torch.autograd.grad(ref, ref_leaf)
        torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-5, atol=1e-6, msg=cls.name())
        torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6, msg=cls.name())
        none = torch.full_like(targets, -100)  # an all-ignored micro-batch gives 0, not NaN
        loss_fn.context = registered.BatchContext(targets=none, segments=segments, taid_t=t)
        assert float(loss_fn(CausalLMOutput(logits=student), signal, mask=(none != -100).unsqueeze(-1))) == 0.0


def test_our_loss_outside_our_entry_point_is_refused(registered):
    """A loss built by plain `distillkit CONFIG` (no context) fails with the command to use instead."""
    from distillkit.signals import DenseSignal
    from transformers.modeling_outputs import CausalLMOutput

    z = torch.zeros(1, 2, 5)
    with pytest.raises(RuntimeError, match=r"python -m distillkit_scd.integrations.distillkit CONFIG"):
        registered.TAIDLoss()(CausalLMOutput(logits=z), DenseSignal(1.0, None, 5, z))


# --------------------------------------------------------------------------------------------------
# A real trainer on tiny models: DistillKit's original code path vs our fixes.
# --------------------------------------------------------------------------------------------------


def _rows(n: int = 8) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"It is {2 * i}."}]} for i in range(n)]


def _dk_config(tiny_pair, data_dir, out_dir, losses, **extra) -> dict:
    teacher, student = tiny_pair
    training_args = {"max_steps": 2, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2,
                     "report_to": [], "use_cpu": True, "logging_steps": 1, "save_strategy": "no",
                     "learning_rate": 1e-4, "seed": 0, "dataloader_num_workers": 0,
                     # TRL's SFTConfig defaults to bf16, and accelerate keeps a process's first mixed-precision
                     # setting for every later trainer: a bf16 trainer here would run other test files' trainers
                     # in bf16 too (test_taid's t trajectory then missed its tolerance when run after this file)
                     "bf16": False}
    training_args.update(extra.pop("training_args", {}))
    return {"model": str(student), "teacher": {"kind": "hf", "path": str(teacher)},
            "dataset": {"train_dataset": {"disk_path": str(data_dir)}}, "sequence_length": 64,
            "output_path": str(out_dir), "use_flash_attention": False, "loss_functions": losses,
            "training_args": training_args, "project_name": "", **extra}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    need_distillkit()
    import datasets

    path = tmp_path_factory.mktemp("dk_data") / "train"
    datasets.Dataset.from_list(_rows()).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def trainer(registered, tiny_pair, data_dir, tmp_path_factory):
    """Our trainer subclass built as `distillkit.main.do_distill` builds it (losses: cross_entropy + kl)."""
    import trl
    from distillkit.configuration import DistillationRunConfig
    from distillkit.main import load_data, load_student_model, load_tokenizer
    from distillkit.signals import OnlineSignalSource
    from transformers import AutoModelForCausalLM

    losses = [{"function": "cross_entropy", "weight": 0.5}, {"function": "kl", "weight": 0.5, "temperature": 1.0}]
    config = DistillationRunConfig.model_validate(
        _dk_config(tiny_pair, data_dir, tmp_path_factory.mktemp("dk_out"), losses))
    tokenizer = load_tokenizer(config)
    ds_train, _ = load_data(config.dataset, tokenizer)
    vocab = len(tokenizer)
    model = load_student_model(config, vocab)
    teacher = AutoModelForCausalLM.from_pretrained(str(tiny_pair[0]))
    args = trl.SFTConfig(**config.training_args, max_length=64, output_dir=config.output_path)
    model.train()  # as during training: loss parts are accumulated for logging in training mode only
    return registered.SCDDistillationTrainer(
        model=model, config=config, signal_source=OnlineSignalSource(teacher, vocab_size=vocab),
        true_vocab_size=vocab, train_dataset=ds_train, args=args, processing_class=tokenizer,
        settings=dk_int.parse_settings(None))


def _batch(trainer):
    return next(iter(trainer.get_train_dataloader()))


def _pop_parts(trainer) -> dict[str, float]:
    """The logged loss parts added since the last call (means over those micro-batches); the step's sums are
    emptied too, so the module's shared trainer starts the next test clean."""
    trainer.step_sums.pop_step(trainer.accelerator)
    return trainer.step_sums.pop_fields(trainer.accelerator)


def test_defect_a_mask_not_shifted(trainer):
    """DistillKit pairs logits[:, s] with labels[:, s]; position s predicts token s+1. Its KL term equals
    the unshifted token mean; ours equals the shifted one (float64 loop references)."""
    from distillkit.trainer import DistillationTrainer

    batch = _batch(trainer)
    labels = batch["labels"].clone()
    labels[:, :4] = -100  # a prompt: the mask's off-by-one moves one position per sample
    batch["labels"] = labels
    with torch.no_grad():
        out = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                labels=batch["labels"])
        t_logits = trainer.signal_source.teacher_model(input_ids=batch["input_ids"],
                                                       attention_mask=batch["attention_mask"]).logits
    seg = torch.arange(labels.shape[0]).unsqueeze(1).expand_as(labels)
    # References: targets aligned with positions; the unshifted one uses the label at the same position.
    ref_shifted = _ref_losses(out.logits[:, :-1], t_logits[:, :-1], labels[:, 1:], seg[:, 1:], 1.0, 1.0)["kl"]
    ref_unshifted = _ref_losses(out.logits, t_logits, labels, seg, 1.0, 1.0)["kl"]
    # Random tiny models are nearly uniform, so the gap is small but far above the 1e-5 tolerance below.
    assert abs(float(ref_shifted) - float(ref_unshifted)) > 1e-4 * abs(float(ref_shifted))
    with torch.no_grad():
        kl_fn = trainer.loss_functions[1]
        original = kl_fn(out, trainer.signal_source.get_signal(batch), mask=(labels >= 0).unsqueeze(-1))
        _pop_parts(trainer)
        trainer.total_distillation_loss(out, batch)
        ours = _pop_parts(trainer)["distillation_loss/2_kl"]
    torch.testing.assert_close(original.double(), ref_unshifted, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(ours, dtype=torch.float64), ref_shifted, rtol=1e-5, atol=1e-6)
    # DistillKit's own method builds exactly that unshifted mask (its trainer.py, total_distillation_loss).
    calls = []
    orig_call = type(kl_fn).__call__

    def spy(self, outputs, signal, mask=None, **kw):
        calls.append(mask)
        return orig_call(self, outputs, signal, mask=mask, **kw)

    type(kl_fn).__call__ = spy
    try:
        with torch.no_grad():
            DistillationTrainer.total_distillation_loss(trainer, out, batch)
    finally:
        type(kl_fn).__call__ = orig_call
    assert torch.equal(calls[0].squeeze(-1), labels >= 0)
    _pop_parts(trainer)


def test_trainer_losses_match_our_pipeline_functions(trainer, monkeypatch):
    """On a real batch, each of our losses inside DistillKit's trainer equals our pipeline's own functions
    (`label_positions` → `token_reverse_kl` / `token_taid_kl` / `adaptive_weight` + `token_kl`, CE)."""
    import torch.nn.functional as F
    from distillkit.configuration import LossFunctionConfig
    from distillkit.trainer import create_loss_func

    from distillkit_scd.losses import (
        TAIDState,
        adaptive_weight,
        label_positions,
        token_kl,
        token_reverse_kl,
        token_taid_kl,
    )

    cfgs = [LossFunctionConfig(function=name, weight=1.0, temperature=1.5)
            for name in ("reverse_kl", "taid", "scd_aw_kl")]
    fns = [create_loss_func(c) for c in cfgs]
    for fn in fns:
        fn.context = trainer.batch_context
    monkeypatch.setattr(trainer, "loss_functions", fns)
    monkeypatch.setattr(trainer, "config", trainer.config.model_copy(update={"loss_functions": cfgs}))
    taid = TAIDState(t_start=0.3)
    monkeypatch.setattr(trainer, "taid_state", taid)
    batch = _batch(trainer)
    with torch.no_grad():
        out = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        teacher = trainer.signal_source.teacher_model(input_ids=batch["input_ids"],
                                                      attention_mask=batch["attention_mask"]).logits
        _pop_parts(trainer)
        trainer.total_distillation_loss(out, batch)
    # keys "distillation_loss/<i>_<name>": the loss values of this micro-batch
    got = {re.sub(r"^distillation_loss/\d+_", "", k): v for k, v in _pop_parts(trainer).items()}
    idx, targets = label_positions(batch["labels"])  # our pipeline's label positions (flat, shifted)
    v = out.logits.shape[-1]
    s_rows, t_rows = out.logits.reshape(-1, v)[idx], teacher.reshape(-1, v)[idx]
    n = idx.numel()
    assert got["reverse_kl"] == pytest.approx(float(token_reverse_kl(s_rows, t_rows, 1.5).sum() / n), rel=1e-5)
    assert got["taid"] == pytest.approx(float(token_taid_kl(s_rows, t_rows, taid.t, 1.5).sum() / n),
                                        rel=1e-5)
    sample = torch.div(idx, batch["labels"].shape[1], rounding_mode="floor")
    ce_s = F.cross_entropy(s_rows, targets, reduction="none")
    ce_t = F.cross_entropy(t_rows, targets, reduction="none")
    rows = batch["labels"].shape[0]
    aw = adaptive_weight(torch.zeros(rows).double().index_add_(0, sample, ce_s.double()),
                         torch.zeros(rows).double().index_add_(0, sample, ce_t.double()))[sample]
    expected = float((aw * token_kl(s_rows, t_rows, 1.5) + (1 - aw) * ce_s).sum() / n)
    assert got["scd_aw_kl"] == pytest.approx(expected, rel=1e-5)


def _packed(trainer):
    """Two samples packed into one row the way TRL's padding-free collator does (no attention_mask)."""
    ids = trainer.processing_class(["What is 1 plus 1? It is 2.", "Say hello to the model now"])["input_ids"]
    a, b = (torch.tensor(x) for x in ids)
    input_ids = torch.cat([a, b]).unsqueeze(0)
    position_ids = torch.cat([torch.arange(len(a)), torch.arange(len(b))]).unsqueeze(0)
    labels = input_ids.clone()
    labels[position_ids == 0] = -100
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}, a, b


def test_defect_b_position_ids_dropped(trainer):
    """On a packed row, DistillKit's student and teacher see the second sample attending to the first
    (logits differ from the sample alone); with our fix both match the sample run alone."""
    from distillkit.trainer import DistillationTrainer

    trainer.model.eval()
    batch, a, b = _packed(trainer)
    with torch.no_grad():
        alone_s = trainer.model(input_ids=b.unsqueeze(0)).logits[0]
        alone_t = trainer.signal_source.teacher_model(input_ids=b.unsqueeze(0)).logits[0]
        _, orig_out = DistillationTrainer.compute_loss(trainer, trainer.model, dict(batch), return_outputs=True)
        _, our_out = trainer.compute_loss(trainer.model, dict(batch), return_outputs=True)
        orig_t = trainer.signal_source.get_signal(batch).logits[0]
        our_t = trainer._teacher_signal(batch).logits[0]
    _pop_parts(trainer)
    second = slice(len(a), None)
    assert not torch.allclose(orig_out.logits[0, second], alone_s, atol=1e-4)
    assert not torch.allclose(orig_t[second], alone_t, atol=1e-4)
    torch.testing.assert_close(our_out.logits[0, second], alone_s, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(our_t[second], alone_t, rtol=1e-4, atol=1e-5)
    assert "position_ids" not in trainer.signal_source.teacher_kwargs  # restored after the call
    trainer.model.train()


_ZERO3_SCRIPT = """
import os, socket, sys, torch
with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
teacher_dir, student_dir, data_dir, out_dir, which = sys.argv[1:6]
import transformers, trl
from distillkit.configuration import DistillationRunConfig
from distillkit.main import create_signal_source, load_data, load_student_model, load_tokenizer
from distillkit.trainer import DistillationTrainer
import distillkit_scd.integrations.distillkit as dk_int
dk_int.register()
from distillkit_scd.integrations.distillkit_fixes import SCDDistillationTrainer
zero3 = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1}
config = DistillationRunConfig.model_validate({
    "model": student_dir, "teacher": {"kind": "hf", "path": teacher_dir}, "sequence_length": 64,
    "dataset": {"train_dataset": {"disk_path": data_dir}}, "output_path": out_dir, "use_flash_attention": False,
    "training_args": {"per_device_train_batch_size": 2, "report_to": [], "deepspeed": zero3, "bf16": False}})
ids = torch.tensor([[1, 2, 3, 4]])
with torch.no_grad():  # the teacher's logits before any ZeRO-3 config exists
    reference = transformers.AutoModelForCausalLM.from_pretrained(teacher_dir)(input_ids=ids).logits
# DistillKit's do_distill order (main.py): student, then SFTConfig (registers ZeRO-3), then the teacher.
tokenizer = load_tokenizer(config)
train, _ = load_data(config.dataset, tokenizer)
vocab = len(tokenizer)
model = load_student_model(config, vocab)
args = trl.SFTConfig(**config.training_args, max_length=64, output_dir=config.output_path)
source = create_signal_source(config, vocab)
print("PARTITIONED", tuple(source.teacher_model.model.embed_tokens.weight.shape) == (0,))
cls, extra = ((DistillationTrainer, {}) if which == "original"
              else (SCDDistillationTrainer, {"settings": dk_int.parse_settings(None)}))
cls(model=model, config=config, signal_source=source, true_vocab_size=vocab, train_dataset=train, args=args,
    processing_class=tokenizer, **extra)
try:
    with torch.no_grad():
        logits = source.get_signal({"input_ids": ids}).logits
    print("TEACHER_OK", float((logits - reference).abs().max()))
except Exception as err:
    print("TEACHER_FAILS", type(err).__name__, err)
"""


def test_fix_c_wraps_online_teacher_when_deepspeed_is_on(trainer, monkeypatch):
    """Fast check of fix (c): with DeepSpeed on, the online teacher goes through TRL's `prepare_deepspeed`
    (the slow test below shows the real ZeRO-3 failure and fix)."""
    import trl.models.utils

    seen = []
    monkeypatch.setattr(trl.models.utils, "prepare_deepspeed", lambda model, acc: seen.append(model) or "engine")
    monkeypatch.setattr(trainer, "is_deepspeed_enabled", True)
    teacher = trainer.signal_source.teacher_model
    try:
        trainer._prepare_teacher()
        assert seen == [teacher] and trainer.signal_source.teacher_model == "engine"
    finally:
        trainer.signal_source.teacher_model = teacher


@pytest.mark.slow
def test_defect_c_teacher_not_prepared_under_zero3(registered, tiny_pair, data_dir, tmp_path):
    """Real ZeRO-3 (DeepSpeed on CPU, one process): DistillKit loads its online teacher after the ZeRO-3
    config exists, so the teacher is partitioned, and its trainer only moves it to the device: its forward
    fails. Ours wraps it with TRL's `prepare_deepspeed`: its logits equal the unpartitioned teacher's."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed")
    results = {}
    for which in ("original", "ours"):
        out = subprocess.run([sys.executable, "-c", _ZERO3_SCRIPT, str(tiny_pair[0]), str(tiny_pair[1]),
                              str(data_dir), str(tmp_path / which), which], capture_output=True, text=True,
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                            "HF_HUB_OFFLINE": "1"}, timeout=300)
        assert "PARTITIONED True" in out.stdout, out.stdout + out.stderr[-3000:]
        results[which] = [line for line in out.stdout.splitlines() if line.startswith("TEACHER_")]
    assert results["original"][0].startswith("TEACHER_FAILS"), results
    assert results["ours"][0].startswith("TEACHER_OK") and float(results["ours"][0].split()[1]) < 1e-5, results


def test_defect_d_item_and_log_every_micro_step(trainer, monkeypatch):
    """DistillKit's loss calls `.item()` (a host sync) and writes a log entry on every micro-batch; ours
    does neither. Over the two micro-batches of one step (gradient accumulation 2, different label
    masks), the log line's KL part is the mean of their float64 loop references, the step's loss is the mean
    of their totals, and there is no distillation term for TAID (no `taid` loss)."""
    from distillkit.trainer import DistillationTrainer

    items = []
    real_item = torch.Tensor.item

    def counting_item(self):
        items.append(1)
        return real_item(self)

    first = _batch(trainer)
    second = dict(first, labels=first["labels"].clone())
    second["labels"][:, :5] = -100  # a prompt: other label tokens, another KL
    with torch.no_grad():
        out = trainer.model(input_ids=first["input_ids"], attention_mask=first["attention_mask"],
                            labels=first["labels"])  # DistillKit's cross_entropy term is the model's loss
        t_logits = trainer.signal_source.teacher_model(input_ids=first["input_ids"],
                                                       attention_mask=first["attention_mask"]).logits
    seg = torch.zeros_like(first["labels"][:, 1:])
    refs = [float(_ref_losses(out.logits[:, :-1], t_logits[:, :-1], b["labels"][:, 1:], seg, 1.0, 1.0)["kl"])
            for b in (first, second)]
    assert abs(refs[0] - refs[1]) > 1e-4 * refs[0]  # the two micro-batches differ
    history = trainer.state.log_history
    n0 = len(history)
    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    with torch.no_grad():
        for _ in range(2):
            DistillationTrainer.total_distillation_loss(trainer, out, first)
    assert len(items) == 4 and len(history) == n0 + 2  # 2 losses × 2 micro-batches; one entry each
    items.clear()
    _pop_parts(trainer)
    with torch.no_grad():
        totals = [float(trainer.total_distillation_loss(out, b)) for b in (first, second)]
    assert items == [] and len(history) == n0 + 2
    monkeypatch.setattr(torch.Tensor, "item", real_item)
    assert trainer.args.gradient_accumulation_steps == 2
    assert trainer.pop_step_loss() == pytest.approx(sum(totals) / 2, rel=1e-6)
    assert trainer.last_step_distill is None
    trainer.log({"loss": totals[0]})
    entry = history[-1]
    assert entry["distillation_loss/2_kl"] == pytest.approx(sum(refs) / 2, rel=1e-5)
    assert "active_checkpoint" not in entry and "taid_t" not in entry  # no schedule, no TAID
    assert _pop_parts(trainer) == {}  # the log line took them


# --------------------------------------------------------------------------------------------------
# End to end through `main`.
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def capture_trainer(registered, monkeypatch):
    """The trainer `main` builds, kept for inspection after the run."""
    kept = []
    real_train = registered.SCDDistillationTrainer.train

    def train(self, *args, **kwargs):
        kept.append(self)
        return real_train(self, *args, **kwargs)

    monkeypatch.setattr(registered.SCDDistillationTrainer, "train", train)
    return kept


def _checkpoint_pool(tiny_pair, tmp_path, n=2):
    """N teacher 'checkpoints' (different seeds, same shape) and their manifest."""
    from distillkit_scd.models.checkpoints import CheckpointEntry, write_manifest
    from distillkit_scd.models.loading import build_tiny_llama, load_tokenizer

    tok = load_tokenizer(str(tiny_pair[0]))
    entries = []
    for j in range(n):
        folder = tmp_path / f"checkpoint-{j + 1}"
        build_tiny_llama(tok, role="teacher", seed=100 + j).save_pretrained(folder, safe_serialization=True)
        entries.append(CheckpointEntry(index=j, step=j + 1, epoch=float(j + 1), path=str(folder), val_loss=1.0 - j))
    return write_manifest(tmp_path, entries, best_index=n - 1, selected_by="val_loss")


def _write(tmp_path, config: dict) -> Path:
    import yaml

    path = tmp_path / "distillkit.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_main_cd_schedule_with_taid_and_reverse_kl(registered, tiny_pair, data_dir, tmp_path, capture_trainer):
    """CD through `main`: checkpoint j in stage j (swapped into DistillKit's teacher in place), TAID's t
    advances once per optimizer step, every part is logged per step, and the model is saved."""
    from safetensors.torch import load_file

    manifest = _checkpoint_pool(tiny_pair, tmp_path / "pool")
    losses = [{"function": "cross_entropy", "weight": 0.4}, {"function": "taid", "weight": 0.4},
              {"function": "reverse_kl", "weight": 0.2, "temperature": 2.0}]
    config = _dk_config(tiny_pair, data_dir, tmp_path / "out", losses)
    config["distillkit_scd"] = {"taid": {"t_start": 0.2, "alpha": 0.01},
                                "schedule": {"method": "cd", "manifest": str(manifest), "steps_per_stage": 1}}
    assert dk_int.main([str(_write(tmp_path, config))]) == 0
    (trainer,) = capture_trainer
    assert [e["chosen"] for e in trainer.stage_callback.log] == [0, 1]
    expected = load_file(str(tmp_path / "pool" / "checkpoint-2" / "model.safetensors"))
    live = trainer.teacher_model_module.state_dict()
    assert all(torch.equal(live[k], v) for k, v in expected.items())
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all("distillation_loss/2_taid" in h and "distillation_loss/3_reverse_kl" in h
                                  for h in logs)
    assert [h["active_checkpoint"] for h in logs] == [0, 1]
    assert [h["taid_t"] for h in logs] == sorted(h["taid_t"] for h in logs) and logs[0]["taid_t"] >= 0.2
    assert logs[0]["learning_rate"] > logs[1]["learning_rate"]  # lr_schedule: global, one decay over the run
    assert 0.2 < trainer.taid_state.t <= 1.0
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_main_scd_with_aw_and_config_errors(registered, tiny_pair, data_dir, tmp_path, capture_trainer):
    """SCD + scd_aw_kl (online AW, our option) through `main`: each stage logs the SCD terms of every
    checkpoint and picks their argmin; AW stays in (0, 1). Bad combinations are refused before any model is
    loaded (exit 2)."""
    manifest = _checkpoint_pool(tiny_pair, tmp_path / "pool")
    config = _dk_config(tiny_pair, data_dir, tmp_path / "out", [{"function": "scd_aw_kl", "weight": 1.0}])
    config["distillkit_scd"] = {"schedule": {"method": "scd", "manifest": str(manifest), "steps_per_stage": 1,
                                             "probe_size": 4, "lr_schedule": "per_stage"},
                                "aw": {"source": "online"}}
    assert dk_int.main([str(_write(tmp_path, config))]) == 0
    (trainer,) = capture_trainer
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "loss" in h]
    assert len(lrs) == 2 and lrs[0] == lrs[1]  # per_stage, T = 1: the schedule restarts every step
    for entry in trainer.stage_callback.log:
        totals = [t["kl_best"] + t["kl_student"] for t in entry["terms"]]
        assert len(totals) == 2 and entry["chosen"] == min(range(2), key=totals.__getitem__)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all(0 < h["distillation_loss/aw_mean"] < 1 for h in logs)

    bad = dict(config, loss_functions=[{"function": "scd_aw_kl", "weight": 1.0},
                                       {"function": "cross_entropy", "weight": 1.0}])
    with pytest.raises(RecipeError, match=r"loss_functions: expected scd_aw_kl alone"):
        dk_int.load_config(_write(tmp_path, bad))
    bad = dict(config, teacher={"kind": "hf", "path": str(tiny_pair[0]), "top_k": 4})
    with pytest.raises(RecipeError, match=r"loss_functions\[0\].function: expected .*full logits"):
        dk_int.load_config(_write(tmp_path, bad))
    bad = dict(config, loss_functions=[{"function": "kl", "weight": 1.0}], distillkit_scd={"taid": {"alpha": 0.1}})
    with pytest.raises(RecipeError, match=r"distillkit_scd.taid: expected no taid settings"):
        dk_int.load_config(_write(tmp_path, bad))
    bad = dict(config, loss_functions=[{"function": "tiad", "weight": 1.0}], distillkit_scd={})
    assert dk_int.main([str(_write(tmp_path, bad))]) == 2  # DistillKit's schema names the bad entry


def test_main_module_runs_as_a_script(registered, tiny_pair, data_dir, tmp_path):
    """`python -m distillkit_scd.integrations.distillkit CONFIG` trains and saves (one step)."""
    config = _dk_config(tiny_pair, data_dir, tmp_path / "out", [{"function": "reverse_kl", "weight": 1.0}],
                        training_args={"max_steps": 1, "gradient_accumulation_steps": 1})
    out = subprocess.run([sys.executable, "-m", "distillkit_scd.integrations.distillkit",
                          str(_write(tmp_path, config))], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                              "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"})
    assert out.returncode == 0, out.stderr[-3000:]
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model_type"] == "llama"


def test_main_resume_restores_stage_log_and_taid(registered, tiny_pair, data_dir, tmp_path, capture_trainer):
    """A run resumed from its checkpoint (`training_args.resume_from_checkpoint: true`) restores the stage
    log, active checkpoint and TAID state saved beside it, and goes on with the next stage."""
    manifest = _checkpoint_pool(tiny_pair, tmp_path / "pool")
    losses = [{"function": "cross_entropy", "weight": 0.5}, {"function": "taid", "weight": 0.5}]
    config = _dk_config(tiny_pair, data_dir, tmp_path / "out", losses,
                        training_args={"save_strategy": "steps", "save_steps": 2, "gradient_accumulation_steps": 1})
    config["distillkit_scd"] = {"schedule": {"method": "cd", "manifest": str(manifest), "steps_per_stage": 1}}
    assert dk_int.main([str(_write(tmp_path, config))]) == 0
    first = capture_trainer[0]
    saved = json.loads((tmp_path / "out" / "checkpoint-2" / "distill_state.json").read_text())
    assert saved["trainer"]["taid"] == first.taid_state.state_dict()
    config["training_args"].update(max_steps=3, resume_from_checkpoint=True)
    restored = []
    real_restore = type(first.extra_state_callback).restore

    def spy(callback, checkpoint):
        real_restore(callback, checkpoint)
        restored.append((callback.trainer.taid_state.state_dict(), list(callback.stage_callback.log)))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(first.extra_state_callback), "restore", spy)
        assert dk_int.main([str(_write(tmp_path, config))]) == 0
    second = capture_trainer[1]
    assert restored[0][0] == saved["trainer"]["taid"] and [e["stage"] for e in restored[0][1]] == [0, 1]
    assert [e["chosen"] for e in second.stage_callback.log] == [0, 1, 1] and second.state.global_step == 3
