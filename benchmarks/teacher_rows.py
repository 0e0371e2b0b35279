"""Teacher rows per checkpoint per train sample for a whole run (Table 1): what each stage ran the teacher on.

    python benchmarks/teacher_rows.py RUN_DIR [--record]

Reads the run's artifacts: `signals/signals.json` (the signals pass: N × S rows), `aw/aw_table.json` (its
`teacher_rows`: N × S when it ran the teachers, 0 when it read L_T from the signals), and every
`distill/<method>/schedule_log.json` (`teacher_rows`: train steps, validation loss, SCD's probe cache).
Divides by N checkpoints × S train rows: 1.0 means each checkpoint saw each train sample once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def count(run: Path) -> dict:
    """{purpose: teacher rows} summed over the run's stages, plus N and S."""
    rows: dict[str, int] = {}
    n = s = None
    signals = run / "signals" / "signals.json"
    if signals.is_file():
        meta = json.loads(signals.read_text())
        n, s = meta["num_checkpoints"], meta["rows"]
        rows["signals"] = meta.get("teacher_rows", n * s)
    aw = run / "aw" / "aw_table.json"
    if aw.is_file():
        meta = json.loads(aw.read_text())
        n, s = meta["num_checkpoints"], meta["num_samples"]
        rows["aw-table"] = meta["metadata"].get("teacher_rows", n * s)  # tables from before the count: N × S
    for log in sorted(run.glob("distill/*/schedule_log.json")):
        data = json.loads(log.read_text())
        if "teacher_rows" not in data:
            raise ValueError(f"{log}: written before teacher rows were counted by purpose; re-run distillation")
        for purpose, value in data["teacher_rows"].items():
            key = f"distill {purpose}"
            rows[key] = rows.get(key, 0) + value
    if n is None:
        raise ValueError(f"{run}: no signals/signals.json or aw/aw_table.json to read N and S from")
    return {"rows": rows, "num_checkpoints": n, "train_rows": s}


def table(result: dict) -> str:
    per = result["num_checkpoints"] * result["train_rows"]
    lines = ["| stage / purpose | teacher rows | per checkpoint per train sample |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:,} | {v / per:.3f} |" for k, v in result["rows"].items()]
    total = sum(result["rows"].values())
    train_only = total - result["rows"].get("distill validation", 0)
    lines.append(f"| **total** | {total:,} | {total / per:.3f} |")
    lines.append(f"| total without validation | {train_only:,} | {train_only / per:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    result = count(args.run)
    text = (f"N = {result['num_checkpoints']} checkpoints, S = {result['train_rows']} train rows "
            f"(`python benchmarks/teacher_rows.py {args.run}`)\n\n{table(result)}")
    print(text)
    if args.record:
        with Path(__file__).with_name("RESULTS.md").open("a", encoding="utf-8") as fh:
            fh.write(f"\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
