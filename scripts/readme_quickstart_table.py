"""Paste the quickstart's Table 1 into README.md, exactly as the code wrote it (never typed by hand).

    distillkit-scd quickstart            # or: make quickstart; writes runs/quickstart/report/table1.md
    python scripts/readme_quickstart_table.py runs/quickstart

Replaces the block between the README's quickstart-table markers with the run's own table (the part
of `report/table1.md` before the paper's table), the date, and the commands above.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

BEGIN = "<!-- quickstart-table: written by scripts/readme_quickstart_table.py from a real run; do not edit -->"
END = "<!-- /quickstart-table -->"


def run_table(table_md: str) -> str:
    """The run's own table from `table1.md`: its title (as bold text) and the table rows."""
    own = table_md.split("\n## The paper")[0]
    lines = own.strip().splitlines()
    title = lines[0].lstrip("# ").strip() if lines and lines[0].startswith("#") else ""
    rows = [line for line in lines if line.startswith("|")]
    if not rows:
        raise ValueError("table1.md: no table rows found before the paper's table")
    return "\n".join(([f"**{title}**", ""] if title else []) + rows)


def replace_block(readme: str, block: str) -> str:
    """`readme` with the text between the markers replaced by `block`."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1 or readme.index(BEGIN) > readme.index(END):
        raise ValueError(f"README: expected one {BEGIN!r} … {END!r} block")
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="the quickstart's run directory (runs/quickstart)")
    parser.add_argument("--readme", default=str(Path(__file__).resolve().parents[1] / "README.md"))
    args = parser.parse_args(argv)
    table = Path(args.run_dir) / "report" / "table1.md"
    if not table.is_file():
        print(f"error: {table}: not found; run `distillkit-scd quickstart --out {args.run_dir}` first",
              file=sys.stderr)
        return 2
    when = datetime.datetime.fromtimestamp(table.stat().st_mtime, datetime.timezone.utc).strftime("%Y-%m-%d")
    block = (f"{run_table(table.read_text(encoding='utf-8'))}\n\n"
             f"(`{table}` of {when}; regenerate: `OMP_NUM_THREADS=1 distillkit-scd quickstart && "
             f"python scripts/readme_quickstart_table.py runs/quickstart`)")
    readme = Path(args.readme)
    readme.write_text(replace_block(readme.read_text(encoding="utf-8"), block), encoding="utf-8")
    print(f"{readme}: quickstart table replaced from {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
