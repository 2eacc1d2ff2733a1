"""The command line every bench script shares, and the JSON record it writes.

Each script defines ``add_arguments(parser)`` (its own options) and ``run(args) -> dict`` (the measurement), and ends
with ``main(NAME, __doc__, add_arguments, run)``. The shared parser adds ``--out`` (the JSON record, by default
``bench/results/<name>.json``) and ``--seed``; the writer wraps ``run``'s dict in a record with the command line, the
date, the machine (lscpu model name and the flags that matter here), the torch version and the load average, which
``python -m bench.render`` turns into the table of current results at the top of docs/benchmarks.md.

A result may carry ``"figures": [{"figure": ..., "value": ...}, ...]``: the headline numbers the table shows. Scripts
run from the repository root as modules (``python -m bench.perf.loader --help``); none edits the import path.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository: conf/, docs/, and ../shared beside it
RESULTS = ROOT / "bench" / "results"
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")
NOT_RECORDED = "not recorded"

log = logging.getLogger("bench")


def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser described by ``doc`` (the script's docstring), with the shared ``--out`` and ``--seed``."""
    p = argparse.ArgumentParser(
        prog=f"python -m {_module(name)}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out", type=Path, default=RESULTS / f"{name}.json", help="the JSON result record (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the run")
    return p


def _module(name: str) -> str:
    """The module a script name runs as (``bench.perf.loader``), for the help line; the name itself if none."""
    for room in ("perf", "studies", "common"):
        if (ROOT / "bench" / room / f"{name}.py").is_file():
            return f"bench.{room}.{name}"
    return name


def machine() -> dict:
    """The CPU model name (lscpu), the flags of interest it has, the core count and the platform."""
    model, flags = NOT_RECORDED, set()
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            model = value.strip()
        elif key.strip() == "Flags":
            flags = set(value.split())
    return {
        "model": model,
        "flags": [f for f in FLAGS_OF_INTEREST if f in flags] if flags else NOT_RECORDED,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def _torch_version() -> str:
    """The installed torch version, without importing it."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return NOT_RECORDED


def record(name: str, result: dict, argv: list[str] | None = None) -> dict:
    """``result`` wrapped with how and where it was measured (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else argv
    result = dict(result)
    figures = result.pop("figures", [])
    return {
        "name": name,
        "command": shlex.join(["python", "-m", _module(name), *argv]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "torch": _torch_version(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else NOT_RECORDED,
        "figures": figures,
        "result": result,
    }


def write_record(path: Path, rec: dict) -> None:
    """Writes ``rec`` as indented JSON at ``path`` (its folder made if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=1, default=str) + "\n")
    log.info("Wrote %s", path)


def main(
    name: str,
    doc: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], dict | None],
    argv: list[str] | None = None,
) -> None:
    """Parses the command line (shared options plus ``add_arguments``), sets up logging, runs ``run`` and writes its
    dict as the record at ``--out``. A ``run`` that returns None wrote nothing worth keeping (e.g. a sub-command)."""
    p = parser(name, doc)
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run(args)
    if result is not None:
        write_record(args.out, record(name, result, sys.argv[1:] if argv is None else argv))
