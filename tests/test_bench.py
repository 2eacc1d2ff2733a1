"""bench/: one package run as modules (no import path edits), one command-line skeleton, one renderer of results."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

from bench import render
from bench.common import cli
from tests.conftest import ROOT

BENCH = ROOT / "bench"
HELPERS = {"cli", "cv_common", "proc_cpu", "scale_figures"}  # imported by the scripts; no command line of their own
SCRIPTS = sorted(
    p
    for p in [*BENCH.glob("perf/*.py"), *BENCH.glob("studies/*.py"), *BENCH.glob("common/*.py")]
    if p.stem != "__init__" and p.stem not in HELPERS
)


def module_name(path: Path) -> str:
    """``bench/perf/loader.py`` -> ``bench.perf.loader``."""
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def test_no_bench_file_edits_the_import_path_and_none_writes_into_docs():
    """The scripts run as modules from the repository root: no ``sys.path`` edit, no sibling import, no docs/ path."""
    files = sorted(BENCH.rglob("*.py"))
    assert len(files) > 25
    assert all((BENCH / room / "__init__.py").is_file() for room in ("", "perf", "studies", "common"))
    for path in files:
        text = path.read_text()
        assert "sys.path" not in text, path
        assert not re.search(
            r"^from (proc_cpu|cv_common|nih_like|loader|latency|ood_rates|ood_study) import", text, re.M
        )
        if path.name != "render.py":  # the renderer writes docs/benchmarks.md; nothing else writes into docs/
            assert '"docs"' not in text and 'docs/benchmarks.md")' not in text, path


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_every_script_imports_and_has_the_shared_skeleton(path):
    """Each script imports as a module and defines ``add_arguments`` and ``run``, handed to `bench.common.cli.main`
    under its own name; its parser has the shared ``--out`` (default ``bench/results/<name>.json``) and ``--seed``."""
    module = importlib.import_module(module_name(path))
    assert callable(module.add_arguments) and callable(module.run)
    assert f'main("{path.stem}", __doc__, add_arguments, run)' in path.read_text()
    parser = cli.parser(path.stem, module.__doc__)
    module.add_arguments(parser)
    assert parser.get_default("out") == cli.RESULTS / f"{path.stem}.json"
    assert parser.get_default("seed") == 0
    assert parser.prog == f"python -m {module_name(path)}"


def test_the_record_says_how_and_where_it_was_measured():
    """`cli.record`: the figures lifted out of the result, the module command line, a date, the machine's flags."""
    rec = cli.record("loader", {"figures": [{"figure": "f", "value": "1"}], "x": 2}, ["--images", "3"])
    assert rec["command"] == "python -m bench.perf.loader --images 3"
    assert rec["figures"] == [{"figure": "f", "value": "1"}] and rec["result"] == {"x": 2}
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", rec["date"])
    flags = rec["machine"]["flags"]
    assert flags == cli.NOT_RECORDED or set(flags) <= set(cli.FLAGS_OF_INTEREST)


def test_the_renderer_turns_two_records_into_the_current_table(tmp_path):
    """Two tiny records give one row per figure (a figure's own command wins over its record's; a missing field
    reads "not recorded"); a file that is not a record is skipped; only the text between the markers changes."""
    results = tmp_path / "results"
    results.mkdir()
    machine = {"model": "Test CPU", "cpus": 2, "flags": ["avx2"]}
    first = {"name": "a", "command": "python -m bench.perf.a", "date": "2026-12-06 10:00 UTC", "machine": machine}
    first["figures"] = [{"figure": "a speed", "value": "3 img/s"}, {"figure": "a | b", "value": "1", "command": "x"}]
    second = {
        "name": "b",
        "date": "2026-12-01",
        "machine": "an old box",
        "figures": [{"figure": "b acc", "value": 0.9}],
    }
    (results / "a.json").write_text(json.dumps(first))
    (results / "b.json").write_text(json.dumps(second))
    (results / "raw.json").write_text(json.dumps({"results": {}}))
    found = render.rows(render.load_records(results))
    assert found == [
        {
            "figure": "a speed",
            "value": "3 img/s",
            "command": "python -m bench.perf.a",
            "date": "2026-12-06 10:00 UTC",
            "machine": "Test CPU, 2 CPUs; flags: avx2",
        },
        {
            "figure": "a | b",
            "value": "1",
            "command": "x",
            "date": "2026-12-06 10:00 UTC",
            "machine": "Test CPU, 2 CPUs; flags: avx2",
        },
        {"figure": "b acc", "value": "0.9", "command": "not recorded", "date": "2026-12-01", "machine": "an old box"},
    ]
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\n{render.BEGIN}\nold table\n{render.END}\n\n## Notes\n\nkept\n")
    render.main(["--results", str(results), "--doc", str(doc)])
    text = doc.read_text()
    assert "old table" not in text and text.endswith("## Notes\n\nkept\n") and text.startswith("# Benchmarks\n")
    table = text[text.index(render.BEGIN) : text.index(render.END)]
    assert (
        "| a speed | 3 img/s | `python -m bench.perf.a` | 2026-12-06 10:00 UTC | Test CPU, 2 CPUs; flags: avx2 |"
        in table
    )
    assert "| a \\| b | 1 | `x` |" in table and "| b acc | 0.9 | not recorded | 2026-12-01 | an old box |" in table
    assert table.count("\n| ") == 4  # the header and three rows


def test_the_seeded_results_render_and_the_page_is_current():
    """Every record in bench/results/ is one the renderer reads, and docs/benchmarks.md holds their table."""
    records = render.load_records(cli.RESULTS)
    assert len(records) == len(list(cli.RESULTS.glob("*.json")))
    table = render.table(render.rows(records))
    assert table in (ROOT / "docs" / "benchmarks.md").read_text()
