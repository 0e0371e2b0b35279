"""scripts/readme_quickstart_table.py: the README's quickstart table is pasted from a run's table1.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_table", ROOT / "scripts" / "readme_quickstart_table.py")
readme_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_table)

TABLE1 = """## Table 1 (this run; clean protocol: checkpoints selected on validation)

| Method | synthetic | Avg (1 cols) |
|---|---|---|
| Teacher SFT | 0.863 | 0.863 |

Avg: unweighted mean of the row's numbers ...

## The paper's Table 1 (Llama-3.1-8B-Instruct → Llama-3.2-3B-Instruct)

| Method | JMMLU | PubmedQA |
|---|---|---|
| Teacher SFT | 0.547 | 0.792 |
"""


def test_run_table_takes_the_runs_own_table_not_the_papers():
    """Title and rows of the run's table; nothing of the explanation or the paper's table."""
    assert readme_table.run_table(TABLE1) == (
        "**Table 1 (this run; clean protocol: checkpoints selected on validation)**\n\n"
        "| Method | synthetic | Avg (1 cols) |\n|---|---|---|\n| Teacher SFT | 0.863 | 0.863 |")


def test_main_replaces_only_the_marked_block(tmp_path):
    """The block between the markers becomes the run's table plus its source; the rest is unchanged."""
    run = tmp_path / "run"
    (run / "report").mkdir(parents=True)
    (run / "report" / "table1.md").write_text(TABLE1, encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{readme_table.BEGIN}\n| old | 0.1 |\n{readme_table.END}\noutro\n", encoding="utf-8")
    assert readme_table.main([str(run), "--readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text.startswith(f"intro\n{readme_table.BEGIN}\n**Table 1 (this run") and text.endswith(
        f"{readme_table.END}\noutro\n")
    assert "| old |" not in text and "| Teacher SFT | 0.863 | 0.863 |" in text and "JMMLU" not in text
    with pytest.raises(ValueError, match="expected one"):
        readme_table.replace_block("no markers", "x")


def test_the_readme_has_one_generated_block():
    """The README keeps exactly one marked quickstart table for the script to replace."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.count(readme_table.BEGIN) == 1 and text.count(readme_table.END) == 1
