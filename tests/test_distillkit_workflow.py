"""A DistillKit user's workflow through our entry point: early one-line errors (before any model loads),
assistant-only labels, the teacher SFT command and its manifest, the static AW table, and a CD run on them.

The first part needs no DistillKit (it runs on both stacks); the rest skips without it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from distillkit_scd import cli
from distillkit_scd.config import RecipeError
from distillkit_scd.integrations import distillkit_checks as checks
from distillkit_scd.integrations import distillkit_data as dk_data


def _rows(n: int = 8) -> list[dict]:
    return [{"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"It is {2 * i}."}]} for i in range(n)]


def _config(tiny_pair, root: Path, **section) -> dict:
    teacher, student = tiny_pair
    return {"model": str(student), "teacher": {"kind": "hf", "path": str(teacher)},
            "dataset": {"train_dataset": {"disk_path": str(root / "data")}}, "sequence_length": 64,
            "output_path": str(root / "out"), "use_flash_attention": False, "project_name": "",
            "loss_functions": [{"function": "cross_entropy", "weight": 0.5}, {"function": "kl", "weight": 0.5, "temperature": 1.0}],
            "training_args": {"max_steps": 2, "per_device_train_batch_size": 2, "report_to": [], "use_cpu": True,
                              "logging_steps": 1, "save_strategy": "no", "learning_rate": 1e-4, "bf16": False,
                              "seed": 0, "dataloader_num_workers": 0},
            **({"distillkit_scd": section} if section else {})}


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: the errors below must come before one."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the config error was reported")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def _one_line_error(capsys, argv) -> str:
    capsys.readouterr()  # earlier output
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# --------------------------------------------------------------------------------------------------
# Without DistillKit: early errors and the labelling itself.
# --------------------------------------------------------------------------------------------------


def test_edit_distance_hand_cases():
    """Levenshtein distance on hand-computed pairs (the near-miss rule is distance <= 2)."""
    assert checks.edit_distance("distillkit_scd", "distillkit_scd") == 0
    assert checks.edit_distance("distilkit_scd", "distillkit_scd") == 1  # deletion
    assert checks.edit_distance("distillkit-scd", "distillkit_scd") == 1  # substitution
    assert checks.edit_distance("distillkitscd_", "distillkit_scd") == 2
    assert checks.edit_distance("kitten", "sitting") == 3
    assert checks.edit_distance("", "abc") == 3


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c.update(distilkit_scd=c.pop("distillkit_scd")),
     r"top-level key 'distilkit_scd' looks like a misspelling of 'distillkit_scd'"),
    (lambda c: c.update(loss_functions=[{"function": "taid", "weight": 1.0, "temprature": 2.0}]),
     r"loss_functions\[0\].temprature: unknown option for taid \(did you mean 'temperature'\?\)"),
    (lambda c: c["distillkit_scd"]["schedule"].update(manifest="MISSING"),
     r"cfg.yaml: distillkit_scd.schedule.manifest: MISSING: manifest not found \(write it with `distillkit-scd "
     r"distillkit-teacher CONFIG --checkpoints N`"),
    (lambda c: None,  # m.json holds `{}`
     r"cfg.yaml: distillkit_scd.schedule.manifest: \S*m.json: checkpoints: expected a non-empty list of checkpoint "
     r"objects, got None"),
])
def test_config_errors_exit_with_one_line_before_any_model(tiny_pair, tmp_path, capsys, no_model_loads, mutate,
                                                           expected):
    """A misspelt section, a loss-option typo, a missing and a malformed manifest: exit 2, one line naming the
    key or file, no model loaded (these checks need neither DistillKit nor any model)."""
    config = _config(tiny_pair, tmp_path, schedule={"method": "cd", "manifest": str(tmp_path / "m.json"),
                                                    "steps_per_stage": 1})
    _write(tmp_path / "m.json", {})
    mutate(config)
    err = _one_line_error(capsys, ["distillkit", str(_write(tmp_path / "cfg.yaml", config))])
    assert re.search(expected, err), err


def _manifest(tmp_path) -> dict:
    (tmp_path / "ck1").mkdir(exist_ok=True)
    return {"checkpoints": [{"index": 0, "step": 10, "epoch": 1.0, "path": str(tmp_path / "ck1"),
                             "val_loss": 1.5}], "best_index": 0, "selected_by": "lowest validation loss"}


@pytest.mark.parametrize("edit, field, expected", [
    (lambda m: m["checkpoints"][0].pop("step"), "checkpoints[0].step", None),
    (lambda m: m["checkpoints"][0].update(index=3), "checkpoints[0].index", "0 (0-based"),
    (lambda m: m["checkpoints"][0].update(epoch="one"), "checkpoints[0].epoch", "a number"),
    (lambda m: m["checkpoints"][0].update(val_loss=float("nan")), "checkpoints[0].val_loss", "a finite number"),
    (lambda m: m["checkpoints"][0].update(folder="x"), "checkpoints[0].folder", "no such key"),
    (lambda m: m.update(best_index=1), "best_index", "an integer in 0..0"),
    (lambda m: m.update(best=0), "best", "no such key"),
    (lambda m: m.update(checkpoints=[]), "checkpoints", "a non-empty list"),
])
def test_manifest_validation_names_file_and_field(tmp_path, edit, field, expected):
    """The documented manifest passes; each broken field is named with the file (docs/distillkit.md)."""
    good = _manifest(tmp_path)
    file = tmp_path / "manifest.json"
    file.write_text(json.dumps(good))
    assert checks.validate_manifest(tmp_path, "cfg") == file
    edit(good)
    file.write_text(json.dumps(good))
    with pytest.raises(RecipeError) as info:
        checks.validate_manifest(file, "cfg.yaml: distillkit_scd.schedule.manifest")
    what = "missing (every checkpoint needs index, path, step, epoch)" if expected is None else f"expected {expected}"
    assert str(info.value).startswith(f"cfg.yaml: distillkit_scd.schedule.manifest: {file}: {field}: {what}"), \
        str(info.value)


def test_plain_distillkit_run_gets_a_hint(tmp_path):
    """A config with our settings whose output folder was written by plain `distillkit` (its saved config,
    which drops our section, and no marker of ours) gets a one-line hint; after our run, or for a config
    without our settings, none."""
    (tmp_path / "distillkit_config.yaml").write_text("model: x\n")
    hint = checks.plain_run_hint(tmp_path, uses_ours=True)
    assert hint and "plain `distillkit`" in hint and "\n" not in hint
    assert checks.plain_run_hint(tmp_path, uses_ours=False) is None
    (tmp_path / checks.MARKER).write_text("{}")
    assert checks.plain_run_hint(tmp_path, uses_ours=True) is None


def test_prepared_dataset_cache_gets_its_own_folder():
    """DistillKit keys its prepared-dataset cache by path, seed and sample count only: assistant-only rows go
    to a subfolder so they never overwrite (or are read as) DistillKit's own formatting."""
    from types import SimpleNamespace

    cfg = SimpleNamespace(dataset=SimpleNamespace(prepared_dataset_path="/cache"))
    dk_data.prepared_path_for(cfg, "all")
    assert cfg.dataset.prepared_dataset_path == "/cache"
    dk_data.prepared_path_for(cfg, "assistant")
    assert cfg.dataset.prepared_dataset_path == "/cache/distillkit_scd-assistant"


def test_assistant_mask_marks_every_assistant_turn(tiny_tokenizer):
    """Multi-turn rows: the masked tokens decode to exactly the assistant turns (each with what the template
    closes it with), nothing of the system or user turns; conversations (from/value) map the same way."""
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Two plus two?"},
                {"role": "assistant", "content": "Four."}]
    ids, mask = dk_data.assistant_mask(messages, tiny_tokenizer)
    assert len(ids) == len(mask)
    # Independent reference: the rendered conversation's text, split at the assistant contents.
    spans, current = [], []
    for t, m in zip(ids, mask):
        if m:
            current.append(t)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    texts = [tiny_tokenizer.decode(s) for s in spans]
    assert len(texts) == 2 and texts[0].startswith("Hello!") and texts[1].startswith("Four.")
    unmasked = tiny_tokenizer.decode([t for t, m in zip(ids, mask) if not m])
    assert "Hi there" in unmasked and "Two plus two?" in unmasked and "Hello!" not in unmasked
    conv = [{"from": {"system": "system", "user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]}
            for m in messages]
    assert dk_data.format_row({"conversations": conv}, tiny_tokenizer) == {"input_ids": ids, "assistant_masks": mask}
    with pytest.raises(ValueError, match="no assistant turn"):
        dk_data.assistant_mask(messages[:2], tiny_tokenizer)


class _ChatMLWords:
    """A word-level tokenizer with a ChatML template (newline token after <|im_end|>), for label ends."""

    eos_token, eos_token_id = "<|im_end|>", 1

    def __init__(self):
        self.vocab = {"<|im_end|>": 1, "\n": 2, "<|im_start|>": 3}

    def get_vocab(self):
        return self.vocab

    def _word(self, w):
        return self.vocab.setdefault(w, len(self.vocab) + 1)

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False):
        ids = []
        for m in messages:
            ids += [3, self._word(m["role"]), 2, *[self._word(w) for w in m["content"].split()], 1, 2]
        return ids + ([3, self._word("assistant"), 2] if add_generation_prompt else [])


def test_assistant_mask_stops_at_end_of_turn_token():
    """ChatML-style template: each assistant turn is labelled up to and including <|im_end|>, not the newline
    the template writes after it (as our pipeline's data/formatting.py labels)."""
    tok = _ChatMLWords()
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"},
                {"role": "user", "content": "bye"}, {"role": "assistant", "content": "ciao"}]
    ids, mask = dk_data.assistant_mask(messages, tok)
    words = {v: k for k, v in tok.vocab.items()}
    assert [words[t] for t, m in zip(ids, mask) if m] == ["hello", "there", "<|im_end|>", "ciao", "<|im_end|>"]
    assert ids[-1] == 2 and mask[-1] == 0  # the trailing newline is in the sequence, unlabelled


def test_aw_rows_collator_tags_each_sample_and_packed_sample():
    """The static-AW collator tags every position with its sample's table row: padded rows up to their
    length, packed rows per sample (position_ids restart at 0); padding and label-free samples get -1; a
    sample missing from the table is an error naming the command that writes it."""
    from distillkit_scd.integrations.distillkit_aw import AW_ROWS, AWRowCollator, sample_key

    a, b, c = [5, 6, 7], [8, 9], [10, 11, 12, 13]
    rows = {sample_key(a): 0, sample_key(b): 1, sample_key(c): 2}
    padded = {"input_ids": torch.tensor([a + [0], b + [0, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
              "labels": torch.tensor([[-100, 6, 7, -100], [-100, 9, -100, -100]])}
    out = AWRowCollator(lambda examples: dict(padded), rows)([])
    assert out[AW_ROWS].tolist() == [[0, 0, 0, -1], [1, 1, -1, -1]]
    packed = {"input_ids": torch.tensor([a + c + b + [0]]), "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0, 1, 0]]),
              "labels": torch.tensor([[-100, 6, 7, -100, 11, 12, 13, -100, 9, -100]])}
    out = AWRowCollator(lambda examples: dict(packed), rows)([])
    assert out[AW_ROWS].tolist() == [[0, 0, 0, 2, 2, 2, 2, 1, 1, -1]]
    with pytest.raises(ValueError, match="not in the AW table.*distillkit-scd aw-table CONFIG"):
        AWRowCollator(lambda examples: dict(padded), {})([])


def test_prompt_completion_rows_label_the_completion(tiny_tokenizer):
    """String and conversational prompt/completion rows: the completion (plus EOS for strings) carries the
    labels; `labels: all` labels every token."""
    eos = tiny_tokenizer.eos_token
    row = dk_data.format_row({"prompt": "Q: 2+2? A:", "completion": " 4"}, tiny_tokenizer)
    ids, mask = row["input_ids"], row["assistant_masks"]
    assert ids == tiny_tokenizer("Q: 2+2? A: 4" + eos)["input_ids"]
    assert tiny_tokenizer.decode([t for t, m in zip(ids, mask) if m]).strip() == ("4" + eos).strip()
    conv = {"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "4"}]}
    row = dk_data.format_row(conv, tiny_tokenizer)
    assert tiny_tokenizer.decode([t for t, m in zip(row["input_ids"], row["assistant_masks"]) if m]).startswith("4")
    assert set(dk_data.format_row(conv, tiny_tokenizer, labels="all")["assistant_masks"]) == {1}


# --------------------------------------------------------------------------------------------------
# With DistillKit: a real batch, the teacher command, the AW table and a CD run.
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tiny_pair, tmp_path_factory):
    pytest.importorskip("distillkit", reason="DistillKit is not installed (not on PyPI: pip install a clone of "
                                             "arcee-ai/DistillKit)")
    import datasets

    root = tmp_path_factory.mktemp("dk_workflow")
    datasets.Dataset.from_list(_rows()).save_to_disk(str(root / "data"))
    return root


def _trainer_batch(config_path):
    """The first training batch of the trainer our entry point builds (DistillKit's do_distill up to it)."""
    import distillkit.main as dk_main

    from distillkit_scd.integrations import distillkit as dk_int

    run_config, settings, _ = dk_int.load_config(config_path)
    kept = {}

    class Stop(Exception):
        pass

    def train(self, *args, **kwargs):
        kept["batch"] = next(iter(self.get_train_dataloader()))
        kept["trainer"] = self
        raise Stop

    with dk_int.patched_trainer(settings, run_config), dk_data.patched_data(settings.labels), \
            pytest.MonkeyPatch.context() as mp:
        from distillkit_scd.integrations.distillkit_fixes import SCDDistillationTrainer

        mp.setattr(SCDDistillationTrainer, "train", train)
        with pytest.raises(Stop):
            dk_main.do_distill(run_config)
    return kept["trainer"], kept["batch"]


def test_real_batch_labels_assistant_only_and_opt_out(tiny_pair, workspace, tmp_path):
    """Decoding a real training batch: by default only the assistant answers (and the template's end of turn)
    carry labels; with `labels: all` DistillKit's whole sequence does, system and user turns included."""
    labelled = {}
    for mode in ("assistant", "all"):
        cfg = _config(tiny_pair, workspace, labels=mode)
        cfg["output_path"] = str(tmp_path / mode)
        trainer, batch = _trainer_batch(_write(tmp_path / f"{mode}.yaml", cfg))
        tok = trainer.processing_class
        labelled[mode] = [tok.decode([t for t in row.tolist() if t != -100]) for row in batch["labels"]]
        whole = [tok.decode(row[mask.bool()].tolist()) for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
        for text, full in zip(labelled[mode], whole):
            answer = full.split("It is ")[1].split(".")[0]
            if mode == "assistant":
                assert text == f"It is {answer}.<|eot_id|>", text  # the answer and its end of turn, nothing else
            else:
                assert "Be brief." in text and "plus" in text and f"It is {answer}." in text, text
    assert labelled["assistant"] != labelled["all"]


def test_real_batch_prompt_completion_rows(tiny_pair, workspace, tmp_path):
    """Prompt/completion rows (which plain DistillKit refuses) train through our entry point with labels on the
    completion and its EOS only."""
    import datasets

    data = tmp_path / "pc"
    datasets.Dataset.from_list([{"prompt": f"Q: {i} plus {i}? A:", "completion": f" {2 * i}"}
                                for i in range(4)]).save_to_disk(str(data))
    cfg = _config(tiny_pair, workspace)
    cfg["dataset"]["train_dataset"]["disk_path"] = str(data)
    cfg["output_path"] = str(tmp_path / "out")
    trainer, batch = _trainer_batch(_write(tmp_path / "pc.yaml", cfg))
    tok = trainer.processing_class
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        text = tok.decode([t for t in labels.tolist() if t != -100])
        prompt = tok.decode([t for t, y in zip(ids.tolist(), labels.tolist()) if y == -100 and t != tok.pad_token_id])
        assert text == f" {int(prompt.split('Q: ')[1].split(' ')[0]) * 2}{tok.eos_token}", (prompt, text)


def _teacher_pool(capsys, tiny_pair, workspace, tmp_path):
    """`distillkit-scd distillkit-teacher CONFIG --checkpoints 2` on the config's own data → its manifest."""
    cfg = _config(tiny_pair, workspace, schedule={"method": "cd", "manifest": str(tmp_path / "teacher" / "manifest.json"),
                                                  "steps_per_stage": 1})
    cfg["output_path"] = str(tmp_path / "out")
    cfg["loss_functions"] = [{"function": "scd_aw_kl", "weight": 1.0}]
    cfg["dataset"]["eval_dataset"] = cfg["dataset"]["train_dataset"]  # p(best) by loss on eval_dataset
    path = _write(tmp_path / "cfg.yaml", cfg)
    assert cli.main(["distillkit-teacher", str(path), "--checkpoints", "2"]) == 0
    manifest = Path(capsys.readouterr().out.strip().splitlines()[-1])
    return path, cfg, manifest


def test_teacher_command_aw_table_and_cd_run_with_static_aw(tiny_pair, workspace, tmp_path, capsys):
    """The documented workflow: the teacher command writes N checkpoints and a manifest that validates; a
    wrong-shape checkpoint is refused before any model loads; `aw-table CONFIG` writes the static table
    (L_S equals a plain CE sum of the SFT student on the sample's label tokens); the CD run with
    `scd_aw_kl` then swaps p(1), p(2) and weights every token by its sample's AW of the active checkpoint."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from distillkit_scd.integrations import distillkit as dk_int
    from distillkit_scd.integrations.distillkit_aw import AW_ROWS, sample_key
    from distillkit_scd.teachers.aw_table import AWTable

    path, cfg, manifest = _teacher_pool(capsys, tiny_pair, workspace, tmp_path)
    assert manifest == tmp_path / "teacher" / "manifest.json"
    checks.validate_manifest(manifest, "test")
    entries = json.loads(manifest.read_text())["checkpoints"]
    assert [e["step"] for e in entries] == [1, 2] and all(Path(e["path"]).is_dir() for e in entries)
    losses = [e["val_loss"] for e in entries]
    assert json.loads(manifest.read_text())["best_index"] == min(range(2), key=losses.__getitem__)

    # Without the table, the run stops at once and says how to write it.
    err = _one_line_error(capsys, ["distillkit", str(path)])
    assert "aw_table.json not found; write it with `distillkit-scd aw-table" in err

    assert cli.main(["aw-table", str(path)]) == 0
    table = AWTable.load(capsys.readouterr().out.strip().splitlines()[-1])
    assert table.num_checkpoints == 2 and len(table.ids) == 8
    # Reference for one sample: the SFT student's summed CE over its label tokens, a plain loop.
    _, batch = _trainer_batch(path)
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    n = int(batch["attention_mask"][0].sum())
    row = table.ids.index(sample_key(ids[:n].tolist()))
    student = AutoModelForCausalLM.from_pretrained(cfg["model"]).eval()
    with torch.no_grad():
        logits = student(input_ids=ids[:n].unsqueeze(0)).logits[0].double()
    ce = sum(float(F.cross_entropy(logits[s], labels[s + 1])) for s in range(n - 1) if labels[s + 1] != -100)
    assert float(table.student_loss[row]) == pytest.approx(ce, rel=1e-5)
    assert batch[AW_ROWS][0, :n].eq(row).all() and batch[AW_ROWS][0, n:].eq(-1).all()

    kept, evals = [], []
    real_total = dk_int_fixes().SCDDistillationTrainer.total_distillation_loss

    def spy(self, outputs, inputs, num_items_in_batch=None):
        loss = real_total(self, outputs, inputs, num_items_in_batch)
        if self.model.training:
            kept.append((self.active_checkpoint, inputs[AW_ROWS].clone(), self.batch_context.aw.clone()))
        else:  # evaluation rows are not in the train table: online AW
            assert AW_ROWS not in inputs and self.batch_context.aw is None
            evals.append(1)
        return loss

    # Evaluation on rows the table does not hold (their AW is computed online) must not stop the run.
    import datasets

    datasets.Dataset.from_list(_rows(12)[8:]).save_to_disk(str(tmp_path / "eval"))
    run_cfg = json.loads(json.dumps(cfg))
    run_cfg["dataset"]["eval_dataset"] = {"disk_path": str(tmp_path / "eval")}
    run_cfg["training_args"].update(eval_strategy="steps", eval_steps=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dk_int_fixes().SCDDistillationTrainer, "total_distillation_loss", spy)
        assert dk_int.main([str(_write(tmp_path / "run.yaml", run_cfg))]) == 0
    assert [k[0] for k in kept] == [0, 1] and evals  # CD: p(1) in stage 0, p(2) in stage 1; evaluated
    for j, rows, aw in kept:
        expected = table.weights[rows[:, 1:].clamp(min=0), j].float()
        assert torch.equal(aw, expected)

    # A checkpoint of another shape (the student) in the manifest: refused before any model loads.
    data = json.loads(manifest.read_text())
    data["checkpoints"][1]["path"] = cfg["model"]
    manifest.write_text(json.dumps(data))
    with pytest.MonkeyPatch.context() as mp:
        import transformers

        mp.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
        err = _one_line_error(capsys, ["distillkit", str(path)])
    assert "distillkit_scd.schedule.manifest" in err and "has shape" in err and cfg["model"] in err, err


def dk_int_fixes():
    from distillkit_scd.integrations import distillkit_fixes

    return distillkit_fixes
