"""The one-page table of current results at the top of docs/benchmarks.md, from the JSON records under bench/results/.

    python -m bench.render [--results bench/results] [--doc docs/benchmarks.md]

Each record (`bench.common.cli.record`, or one transcribed from the lab notebook) lists its headline
``figures``; every figure becomes one row: figure, value, command, date, machine. A figure may carry its own
``command``, ``date`` or ``machine`` (a transcribed record gathers figures of several runs); a field missing in
both reads "not recorded". The table replaces the text between ``<!-- current:begin -->`` and
``<!-- current:end -->`` (inserted under the first heading when the markers are missing); the rest of the file is
kept. The records are files lungnet did not write in this run: anything that is not a record is skipped with a
warning.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from bench.common.cli import NOT_RECORDED, RESULTS, ROOT

log = logging.getLogger("bench.render")
BEGIN, END = "<!-- current:begin -->", "<!-- current:end -->"
COLUMNS = ("figure", "value", "command", "date", "machine")


def load_records(folder: Path) -> list[dict]:
    """The records in ``folder`` (``*.json``, by name); files that are not records are skipped with a warning."""
    records = []
    for path in sorted(folder.glob("*.json")):
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            log.warning("%s: not readable JSON (%s); skipped", path, exc)
            continue
        figures = rec.get("figures") if isinstance(rec, dict) else None
        if not isinstance(figures, list) or not all(isinstance(f, dict) and "figure" in f for f in figures):
            log.warning("%s: no 'figures' list of {'figure', 'value', ...}; skipped", path)
            continue
        records.append({**rec, "file": path.name})
    return records


def machine_text(machine: object) -> str:
    """A record's machine in one cell: model, CPU count and flags of interest from a dict, a string as written."""
    if isinstance(machine, dict):
        flags = machine.get("flags")
        flags = ", ".join(map(str, flags)) if isinstance(flags, list) else str(flags or NOT_RECORDED)
        cpus = f", {machine['cpus']} CPUs" if isinstance(machine.get("cpus"), int) else ""
        note = f" ({machine['note']})" if isinstance(machine.get("note"), str) else ""
        return f"{machine.get('model', NOT_RECORDED)}{cpus}; flags: {flags or 'none of interest'}{note}"
    return str(machine) if machine else NOT_RECORDED


def rows(records: list[dict]) -> list[dict[str, str]]:
    """One row per figure of every record: figure, value, command, date, machine (the figure's own field, else the
    record's, else "not recorded")."""
    out = []
    for rec in records:
        for fig in rec["figures"]:
            row = {}
            for key in COLUMNS:
                value = fig.get(key, rec.get(key))
                row[key] = machine_text(value) if key == "machine" else str(value if value is not None else "")
                row[key] = row[key] or NOT_RECORDED
            out.append(row)
    return out


def _cell(text: str, key: str) -> str:
    """A table cell: pipes escaped, line breaks joined; commands in code spans."""
    text = " ".join(text.split()).replace("|", "\\|")
    return f"`{text}`" if key == "command" and text != NOT_RECORDED else text


def table(table_rows: list[dict[str, str]]) -> str:
    """The markdown table of the rows."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r[k], k) for k in COLUMNS) + " |" for r in table_rows]
    return "\n".join(lines) + "\n"


def replace_current(doc: str, text: str) -> str:
    """``doc`` with the text between the markers replaced by ``text`` (markers inserted under the first heading, or
    at the top, when missing)."""
    block = f"{BEGIN}\n{text}{END}"
    start, end = doc.find(BEGIN), doc.find(END)
    if start >= 0 and end > start:
        return doc[:start] + block + doc[end + len(END) :]
    first, sep, rest = doc.partition("\n")
    if first.startswith("# "):
        return f"{first}\n\n{block}\n{sep}{rest}"
    return f"{block}\n\n{doc}"


def main(argv: list[str] | None = None) -> None:
    """Reads the records and rewrites the current table in the document."""
    parser = argparse.ArgumentParser(prog="python -m bench.render", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="the records' folder (default: %(default)s)")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md", help="(default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.results.is_dir():
        raise SystemExit(f"--results {args.results}: no such folder; give the folder of the JSON result records")
    found = rows(load_records(args.results))
    intro = (
        "Current results: one row per figure of every record in bench/results/ (`python -m bench.render` writes this "
        "table; do not edit it by hand).\n\n"
    )
    doc = args.doc.read_text(encoding="utf-8") if args.doc.is_file() else "# Benchmarks\n"
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(replace_current(doc, intro + table(found)), encoding="utf-8")
    log.info("%d figures from %s into %s", len(found), args.results, args.doc)


if __name__ == "__main__":
    main()
