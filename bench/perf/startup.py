"""How long ``--help`` and the config-level refusals take, and what a refusal imports (issue #28 §3).

    python -m bench.perf.startup [--repeat 3] [--out startup.json]   # the tables also in startup.md

Runs each command line from a scratch folder (a fake checkpoint file, no data), ``--repeat`` times, and reports the
median wall time, the exit status and the refusal's one line; then ``python -X importtime`` of one refusal, its
slowest imports (cumulative). Every refusal must exit 2 before torch, Lightning or timm load
(`lungnet.commands.preflight`).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common.cli import ROOT, main

log = logging.getLogger("bench.startup")

# (label, command line after the interpreter); {ckpt} is an existing file, {tmp} the scratch folder
CASES = [
    ("train.py --help", ["train.py", "--help"]),
    ("evaluate.py --help", ["evaluate.py", "--help"]),
    ("predict.py --help", ["predict.py", "--help"]),
    ("compare.py --help", ["compare.py", "--help"]),
    ("evaluate.py split=valid", ["evaluate.py", "ckpt={ckpt}", "split=valid"]),
    ("evaluate.py (no ckpt=)", ["evaluate.py"]),
    ("evaluate.py ckpt=<missing file>", ["evaluate.py", "ckpt={tmp}/missing.ckpt"]),
    ("evaluate.py data.root=<missing>", ["evaluate.py", "ckpt={ckpt}", "data.root={tmp}/nowhere"]),
    ("train.py model.name=resnet181", ["train.py", "model.name=resnet181"]),
    ("train.py data=pneumonia data.root=<missing>", ["train.py", "data=pneumonia", "data.root={tmp}/nowhere"]),
    ("train.py optimizer.lr=-1", ["train.py", "optimizer.lr=-1"]),
    ("train.py data=mnist (group typo)", ["train.py", "data=mnist"]),
    ("predict.py input=<missing>", ["predict.py", "ckpt={ckpt}", "input={tmp}/nope.png"]),
    ("python -m lungnet.export ckpt=<missing>", ["-m", "lungnet.export", "ckpt={tmp}/missing.ckpt"]),
    (
        "python -m lungnet.audit split=x",
        ["-m", "lungnet.audit", "ckpt={ckpt}", "split=x"],
    ),
]
IMPORTTIME_CASE = ["evaluate.py", "ckpt={ckpt}", "split=valid"]


def run_case(args: list[str], tmp: Path) -> tuple[float, int, str]:
    """(seconds, exit status, the error line or '') of one command line, run from ``tmp``."""
    argv = [a.format(ckpt=tmp / "best.ckpt", tmp=tmp) for a in args]
    argv = [str(ROOT / argv[0]) if argv[0].endswith(".py") else argv[0], *argv[1:]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LUNGNET_OUTPUTS": str(tmp / "outputs"), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if "Error: " in line]
    return seconds, proc.returncode, re.sub(r"^\[[^]]*\]\[[^]]*\]\[ERROR\] - ", "", said[0]) if said else ""


def importtime(args: list[str], tmp: Path, top: int = 8) -> list[tuple[float, str]]:
    """The ``top`` slowest imports (cumulative seconds, module) of one command line."""
    argv = [a.format(ckpt=tmp / "best.ckpt", tmp=tmp) for a in args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LUNGNET_OUTPUTS": str(tmp / "outputs")}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / argv[0]), *argv[1:]],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    rows = []
    for line in proc.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s+(\S.*)$", line)
        if match:
            rows.append((int(match.group(1)) / 1e6, match.group(2).strip()))
    return sorted(rows, reverse=True)[:top]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """How many times each command line runs."""
    parser.add_argument("--repeat", type=int, default=3)


def run(opts: argparse.Namespace) -> dict:
    """Every case's median seconds, exit status and line, and the slowest imports; the tables beside ``--out``."""
    cases = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        (tmp / "best.ckpt").write_bytes(b"not a checkpoint: every case is refused before it is read")
        lines = ["| command | median s | exit | the one line |", "|---|---:|---:|---|"]
        for label, args in CASES:
            runs = [run_case(args, tmp) for _ in range(opts.repeat)]
            seconds = statistics.median(r[0] for r in runs)
            lines.append(f"| `{label}` | {seconds:.2f} | {runs[0][1]} | {runs[0][2][:110]} |")
            cases.append({"command": label, "median_s": seconds, "exit": runs[0][1], "line": runs[0][2]})
            log.info("%-48s %6.2f s  exit %d", label, seconds, runs[0][1])
        left = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.name != "best.ckpt")
        lines += ["", f"Left in the scratch folder: {left or 'nothing'}", ""]
        lines += [f"`python -X importtime {' '.join(IMPORTTIME_CASE)}`: slowest imports (cumulative)", ""]
        lines += ["| module | s |", "|---|---:|"]
        lines += [f"| {module} | {sec:.3f} |" for sec, module in importtime(IMPORTTIME_CASE, tmp)]
    text = "\n".join(lines) + "\n"
    print(text)  # noqa: T201 - the report
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.with_suffix(".md").write_text(text, encoding="utf-8")
    return {"cases": cases, "table": lines}


if __name__ == "__main__":
    main("startup", __doc__, add_arguments, run)
