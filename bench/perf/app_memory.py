"""Web app memory under parallel heatmap requests of a huge image: peak RSS of the real server, one run.

    python -m bench.perf.app_memory [--model densenet121] [--size 224] [--side 8000] [--parallel 3] [--ckpt best.ckpt]

Starts ``python -m lungnet.app`` as a subprocess (uvicorn, the real server), reads its resident memory from
``/proc/<pid>/status`` when idle, then sends ``--parallel`` simultaneous ``POST /predict?heatmap=true`` requests
of one ``--side`` x ``--side`` RGBA PNG (8000 px: exactly the 64 Mpx cap of `lungnet.data.images`, a few hundred
KB on disk: a real X-ray enlarged with nearest-neighbour steps compresses well) and records the peak: the
kernel's high-water mark ``VmHWM`` (every spike, however short) and ``VmRSS`` sampled every 20 ms. The model is
randomly initialised (memory does not depend on the weights) unless ``--ckpt`` is given. The record (``--out``)
holds the figures; the markdown section ("## Web app memory: parallel heatmap requests of an 8000 x 8000 PNG") is
printed and written beside it as .md.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import io
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from bench.common.cli import ROOT, main
from bench.perf.latency import SHARED, machine

log = logging.getLogger("bench")
HEADING = "## Web app memory: parallel heatmap requests of an 8000 x 8000 PNG"
TARGET_GB = 2.0


def huge_png(path: Path, side: int) -> Path:
    """An RGBA PNG of ``side`` x ``side`` px: a real X-ray (or a gradient) at 250 px, enlarged by repetition."""
    files = sorted((SHARED / "darkcovidnet" / "Pneumonia").glob("*.jpg"))
    small = Image.open(files[0]).convert("L") if files else Image.linear_gradient("L")
    small = small.resize((250, 250), Image.Resampling.BILINEAR)
    big = small.resize((side, side), Image.Resampling.NEAREST).convert("RGBA")
    big.save(path, optimize=True)
    return path


def memory(pid: int) -> dict[str, float]:
    """``VmRSS`` (now) and ``VmHWM`` (peak since start) of a process, in GB (10^9 bytes)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024 / 1e9  # kB -> GB
    return fields


def post(url: str, data: bytes, name: str) -> tuple[int, dict, float]:
    """One multipart upload; (status, JSON body, seconds)."""
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=900) as resp:
            return resp.status, json.loads(resp.read()), time.perf_counter() - start
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), time.perf_counter() - start


def start_server(ckpt: Path, port: int) -> subprocess.Popen:
    """``python -m lungnet.app`` on 127.0.0.1:``port``; returns once ``/health`` answers."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "lungnet.app", f"ckpt={ckpt}", f"port={port}", "log_level=warning"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start within 300 s")


def measure(ckpt: Path, image: Path, parallel: int) -> dict:
    """Idle and peak memory of a fresh server around ``parallel`` simultaneous heatmap requests of ``image``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start_server(ckpt, port)
    try:
        time.sleep(2.0)
        idle = memory(proc.pid)["VmRSS"]
        sampled, done = [idle], threading.Event()

        def sample() -> None:
            while not done.is_set():
                sampled.append(memory(proc.pid)["VmRSS"])
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        data = image.read_bytes()
        url = f"http://127.0.0.1:{port}/predict?heatmap=true"
        start = time.perf_counter()
        with ThreadPoolExecutor(parallel) as pool:
            answers = list(pool.map(lambda k: post(url, data, f"huge{k}.png"), range(parallel)))
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        after = memory(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    overlay_sides = []
    for status, body, _ in answers:
        if status != 200:
            raise RuntimeError(f"request failed with {status}: {body}")
        overlay_sides.append(max(Image.open(io.BytesIO(base64.b64decode(body["heatmap_png_base64"]))).size))
    return {
        "idle_gb": idle,
        "peak_hwm_gb": after["VmHWM"],
        "peak_sampled_gb": max(sampled),
        "after_gb": after["VmRSS"],
        "seconds": [round(t, 1) for _, _, t in answers],
        "wall_s": wall,
        "overlay_side": max(overlay_sides),
    }


def markdown(result: dict, args, command: str, image: Path) -> str:
    """The section text: command, machine, table, verdict."""
    above = result["peak_hwm_gb"] - result["idle_gb"]
    verdict = "met" if above < TARGET_GB else "NOT met"
    side = args.side
    return "\n".join(
        [
            HEADING,
            "",
            f"Run {datetime.datetime.now():%Y-%m-%d %H:%M}: `{command}`",
            "",
            f"- Machine: {machine()}.",
            f"- Server: `python -m lungnet.app` (uvicorn, default options), model {args.model} at {args.size} px "
            f"({'--ckpt ' + str(args.ckpt) if args.ckpt else 'random weights'}), heatmap method gradcam.",
            f"- Input: one {side} x {side} RGBA PNG ({image.stat().st_size / 1024:.0f} KB; "
            f"{side * side / 1e6:.0f} Mpx, "
            f"the cap is 64 Mpx), sent {args.parallel} times at once to `/predict?heatmap=true`.",
            "- Memory of the server process from `/proc/<pid>/status`: idle `VmRSS` after start-up, peak `VmHWM` "
            "(the kernel's high-water mark: every spike) and `VmRSS` sampled every 20 ms.",
            "",
            "| idle RSS (GB) | peak RSS, VmHWM (GB) | peak above idle (GB) | peak RSS sampled (GB) | RSS after (GB) "
            "| seconds per request | overlay long side (px) |",
            "|---:|---:|---:|---:|---:|---|---:|",
            f"| {result['idle_gb']:.2f} | {result['peak_hwm_gb']:.2f} | {above:.2f} | {result['peak_sampled_gb']:.2f} "
            f"| {result['after_gb']:.2f} | {', '.join(map(str, result['seconds']))} | {result['overlay_side']} |",
            "",
            f"Target: under {TARGET_GB:g} GB above the idle server: {verdict}.",
            "",
        ]
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, its input size or checkpoint, the image side and the parallel requests."""
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--ckpt", type=Path, default=None, help="a trained checkpoint (default: random weights)")
    parser.add_argument("--side", type=int, default=8000)
    parser.add_argument("--parallel", type=int, default=3)


def run(args: argparse.Namespace) -> dict:
    """Idle and peak memory of the server under the parallel requests; the section printed and beside ``--out``."""
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt
        if ckpt is None:
            from tests.serve.test_inference import make_checkpoint  # the tests' random-weight checkpoint

            ckpt = make_checkpoint(Path(tmp) / "best.ckpt", name=args.model, size=args.size)
        image = huge_png(Path(tmp) / "huge.png", args.side)
        result = measure(ckpt, image, args.parallel)
        command = " ".join(["python -m bench.perf.app_memory", *sys.argv[1:]])
        section = markdown(result, args, command, image)
    log.info("%s", json.dumps(result))
    print(section)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(section, encoding="utf-8")
    return {"machine": machine(), **result}


if __name__ == "__main__":
    main("app_memory", __doc__, add_arguments, run)
