"""CPU inference benchmark: PyTorch eager vs TorchScript vs ONNX Runtime vs OpenVINO (fp32, optionally int8), one run.

    python -m bench.perf.latency [--models densenet121 resnet50] [--size 224] [--batch 8] [--threads 2] [--int8]
        [--trained outputs/<run>/checkpoints/best.ckpt ...]

Measures single-image latency (median of ``--repeats`` calls) and batch throughput (images/s over
``--batch`` images, best of five) per model and runtime (PyTorch eager, TorchScript, ONNX Runtime and
OpenVINO on the files `lungnet.serve.export` writes, fp32 and with ``--int8`` int8), on randomly initialised
weights (speed does not depend on them); ``--trained`` checkpoints get an int8 accuracy check on their
validation split. The record (``--out``) holds the rows; the markdown section (heading "## CPU inference: eager vs
TorchScript vs ONNX Runtime vs OpenVINO") is written beside it as .md. Agreement with eager
PyTorch is measured on real X-rays from ../shared/data/darkcovidnet when present.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Passive OpenMP waiting: on a shared, oversubscribed CPU the default spin-waiting made eager PyTorch
# with 2 threads ~30x slower than with 1 (threads spin while their partner is descheduled).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common.cli import ROOT, main  # noqa: E402
from lungnet.artifacts.checkpoint import CheckpointError  # noqa: E402
from lungnet.data.preprocessing import Preprocessing  # noqa: E402
from lungnet.data.transforms import Normalize, build_transform, make_pipeline  # noqa: E402
from lungnet.hardware import cpu_has_native_bf16, cpu_summary  # noqa: E402
from lungnet.models.registry import create_model  # noqa: E402

log = logging.getLogger("bench")
HEADING = "## CPU inference: eager vs TorchScript vs ONNX Runtime vs OpenVINO"
SHARED = Path(os.environ.get("LUNGNET_SHARED_DATA", ROOT.parent / "shared" / "data"))


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall times of ``repeats`` calls (after two warm-up calls)."""
    fn(), fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def real_images(model: torch.nn.Module, size: int, n: int) -> torch.Tensor | None:
    """Up to ``n`` real X-rays preprocessed for ``model`` (None when the shared data is absent)."""
    from lungnet.data.images import read_image

    files = sorted((SHARED / "darkcovidnet").glob("*/*.jpg"))[:: max(1, 925 // max(n, 1))][:n]
    if not files:
        return None
    spec = model.spec
    pipe = make_pipeline(build_transform(size, None, "squash"), Normalize(spec.mean, spec.std, spec.in_chans))
    return torch.stack([pipe(read_image(f)) for f in files])


def _prep(model: torch.nn.Module, size: int) -> Preprocessing:
    spec = model.spec
    labels = tuple(f"class{i}" for i in range(spec.num_classes))
    return Preprocessing(
        labels, False, size, spec.in_chans, tuple(spec.mean), tuple(spec.std), "squash", None, spec.name
    )


def runtimes(model: torch.nn.Module, size: int, tmp: Path, threads: int, int8: bool, calib: torch.Tensor):
    """name -> callable(batch tensor) -> logits ndarray, for each runtime.

    The ONNX files are written by `lungnet.serve.export` (fp32, and int8 through its `quantize_onnx`), and
    OpenVINO runs them through `lungnet.artifacts.runtimes.OpenVinoRunner`: the paths predict.py ships.
    """
    import onnxruntime as ort

    from lungnet.artifacts.runtimes import OpenVinoRunner
    from lungnet.serve.export import export_onnx, quantize_onnx

    out: dict[str, Callable[[torch.Tensor], np.ndarray]] = {}

    def eager(x):
        with torch.no_grad():
            return model(x).numpy()

    out["PyTorch eager (no_grad)"] = eager
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)  # .to() is in place: keep model as is

    def eager_cl(x):
        with torch.inference_mode():
            return cl_model(x.contiguous(memory_format=torch.channels_last)).numpy()

    out["PyTorch eager, channels_last + inference_mode"] = eager_cl

    def eager_bf16(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return cl_model(x.contiguous(memory_format=torch.channels_last)).float().numpy()

    out["PyTorch eager, channels_last + bf16 autocast (predict.py precision=bf16)"] = eager_bf16
    example = calib[:1]
    with torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))

    def script(x):
        with torch.inference_mode():
            return frozen(x).numpy()

    out["TorchScript (trace + freeze + optimize_for_inference)"] = script
    prep = _prep(model, size)
    paths = {"fp32": export_onnx(model, prep, tmp / "model.onnx", prep.to_dict())}
    if int8:
        paths["int8"] = quantize_onnx(paths["fp32"], tmp / "model.int8.onnx", calib.numpy(), prep.to_dict())
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # passive, like OpenMP above
    for precision, path in paths.items():
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        out[f"ONNX Runtime {precision}"] = lambda x, s=session: s.run(None, {"image": x.numpy()})[0]
    try:
        for precision, path in paths.items():
            # the precision hint is always explicit: OpenVINO's own default is bf16 on AVX-512 BF16 / AMX CPUs
            out[f"OpenVINO {precision} (same ONNX file)"] = OpenVinoRunner(path, threads, "fp32").logits
        if cpu_has_native_bf16():
            runner = OpenVinoRunner(paths["fp32"], threads, "bf16")
            out["OpenVINO bf16 (fp32 ONNX file, precision=bf16)"] = runner.logits
    except CheckpointError as exc:
        log.warning("OpenVINO rows skipped: %s", exc)
    return out


def bench_model(name: str, args) -> list[dict]:
    """One row per runtime for model ``name``."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, image_size=args.size).eval()
    single = torch.randn(1, 3, args.size, args.size)
    batch = torch.randn(args.batch, 3, args.size, args.size)
    pool = real_images(model, args.size, 48)
    # int8 is calibrated on 24 real X-rays and agreement is measured on 24 others
    if pool is None:
        log.warning("No real X-rays under %s: int8 calibrated and checked on random noise", SHARED / "darkcovidnet")
    calib = pool[0::2] if pool is not None else torch.randn(24, 3, args.size, args.size)
    real = pool[1::2] if pool is not None else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fns = runtimes(model, args.size, Path(tmp), args.threads, args.int8, calib)
        with torch.no_grad():
            reference = model(real).numpy() if real is not None else None
        for label, fn in fns.items():
            lat = timed(lambda fn=fn: fn(single), args.repeats)
            thr = timed(lambda fn=fn: fn(batch), 5)
            row = {
                "model": name,
                "runtime": label,
                "latency_ms": 1000 * statistics.median(lat),
                "throughput": args.batch / min(thr),
            }
            if reference is not None:
                got = fn(real)
                row["max_abs_diff"] = float(np.abs(got - reference).max())
                row["top1_agree"] = float((got.argmax(1) == reference.argmax(1)).mean())
            rows.append(row)
            log.info("%s | %s | %.1f ms | %.1f img/s", name, label, row["latency_ms"], row["throughput"])
    eager = rows[0]["throughput"]
    for row in rows:
        row["speedup"] = row["throughput"] / eager
    return rows


def trained_check(ckpt: Path, threads: int, calib_n: int, weights: list[str]) -> list[dict]:
    """int8 and bf16 against PyTorch fp32 on a trained single-label checkpoint: accuracy and agreement on its val split.

    One int8 model per ``weights`` encoding is written by ``lungnet.serve.export`` (calibrated on ``calib_n``
    images of the run's train split) and run by ONNX Runtime and by OpenVINO, as predict.py would.
    """
    import pandas as pd

    from lungnet.serve.export import export
    from lungnet.serve.inference import Predictor

    run = ckpt.parent.parent
    val = pd.read_csv(run / "splits" / "val.csv")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runners = {"PyTorch (checkpoint)": Predictor(ckpt)}
        if cpu_has_native_bf16():
            runners["PyTorch bf16 autocast (precision=bf16)"] = Predictor(ckpt, precision="bf16")
            fp32 = export(ckpt, "onnx", Path(tmp) / "model.onnx")
            try:
                runners["OpenVINO bf16 (fp32 ONNX, precision=bf16)"] = Predictor(
                    fp32, threads=threads, runtime="openvino", precision="bf16"
                )
            except CheckpointError as exc:
                log.warning("OpenVINO skipped: %s", exc)
        for mode in weights:
            q = export(
                ckpt,
                "onnx",
                Path(tmp) / f"model.{mode}.int8.onnx",
                int8=True,
                calib=run / "splits" / "train.csv",
                calib_n=calib_n,
                min_agreement=0.0,
                int8_weights=mode,
            )
            runners[f"ONNX Runtime int8 ({mode} weights)"] = Predictor(q, threads=threads)
            try:
                runners[f"OpenVINO int8 ({mode} weights)"] = Predictor(q, threads=threads, runtime="openvino")
            except CheckpointError as exc:
                log.warning("OpenVINO skipped: %s", exc)
        reference = None
        for label, predictor in runners.items():
            predicted = np.array([r["predicted"] for r in predictor.predict(val["path"], batch_size=16)])
            reference = predicted if reference is None else reference
            rows.append(
                {
                    "checkpoint": str(ckpt),
                    "model": predictor.prep.model,
                    "runtime": label,
                    "n": len(val),
                    "accuracy": float((predicted == val["label"].to_numpy()).mean()),
                    "agreement": float((predicted == reference).mean()),
                }
            )
            log.info(
                "%s | %s | accuracy %.3f | agreement %.3f", ckpt, label, rows[-1]["accuracy"], rows[-1]["agreement"]
            )
    return rows


def machine() -> str:
    """CPU model name and core counts from lscpu, plus the load average."""
    try:
        info = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        info = ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    model = fields.get("Model name", platform.processor() or "unknown").strip()
    cpus = fields.get("CPU(s)", str(os.cpu_count())).strip()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    flags = " ".join(cpu_summary()["flags"]) or "none of those lungnet reports"
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16 (bf16 rows omitted)"
    return f"{model}, {cpus} CPU(s) visible (lscpu), CPU flags {flags} ({bf16}), load average at the end {load}"


def _versions() -> str:
    import onnxruntime

    try:
        import openvino

        ov = f", openvino {openvino.__version__.split('-')[0]}"
    except ImportError:
        ov = " (openvino not installed: its rows are absent)"
    return f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}{ov}"


def markdown(rows: list[dict], trained: list[dict], args, command: str, elapsed: float) -> str:
    """The section text (heading, command, machine, table, verdicts, trained-checkpoint check)."""
    lines = [
        HEADING,
        "",
        f"Run {datetime.datetime.now():%Y-%m-%d %H:%M} in {elapsed:.0f} s: `{command}`",
        "",
        f"- Machine: {machine()}; {_versions()}; "
        f"{args.threads} threads everywhere, passive waiting "
        f"(OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, ORT allow_spinning=0; OpenVINO latency hint).",
        f"- Input {args.size} px, 3 channels, randomly initialised weights (speed does not depend on them). "
        f"Latency: median of {args.repeats} single-image calls; throughput: batch of {args.batch}, best of 5.",
        "- ONNX files are written by `lungnet.serve.export` (int8: its `quantize_onnx`, static QDQ, per-channel "
        "reduced-range int8 weights, uint8 activations, calibrated on 24 real darkcovidnet X-rays); "
        "OpenVINO runs the same files through `lungnet.artifacts.runtimes.OpenVinoRunner` "
        "(`predict.py runtime=openvino`) "
        "with its precision hint set explicitly: fp32 rows run fp32 on every CPU (OpenVINO's own default is bf16 "
        "on AVX-512 BF16 / AMX CPUs); the bf16 rows (`precision=bf16`) appear only on CPUs with native bf16.",
        "- Agreement: max |logit diff| and top-1 agreement with eager PyTorch on 24 other real darkcovidnet X-rays. "
        "The weights here are random, so top-1 agreement says little about int8 accuracy: see the trained "
        "checkpoints below. On a shared CPU (see the load average) absolute numbers drop and ratios are noisy.",
        "",
        "| model | runtime | latency (ms) | throughput (img/s) | vs eager | max abs diff | top-1 agree |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "n/a"
        agree = f"{100 * r['top1_agree']:.0f}%" if "top1_agree" in r else "n/a"
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['latency_ms']:.1f} | {r['throughput']:.1f} | "
            f"{r['speedup']:.2f}x | {diff} | {agree} |"
        )
    lines += [
        "",
        "Fastest path per model against the faster of the two eager PyTorch rows (target: at least 2x throughput):",
        "",
    ]
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        best = max(mine, key=lambda r: r["throughput"])
        eager = max((r for r in mine if r["runtime"].startswith("PyTorch eager")), key=lambda r: r["throughput"])
        ratio = best["throughput"] / eager["throughput"]
        verdict = "met" if ratio >= 2 else "NOT met"
        lines.append(
            f"- {name}: {best['runtime']} {best['throughput']:.1f} img/s vs {eager['runtime']} "
            f"{eager['throughput']:.1f} img/s = {ratio:.2f}x: 2x target {verdict}."
        )
    if trained:
        lines += [
            "",
            "int8 on trained checkpoints (`--trained`): each exported with `python -m lungnet.export ckpt=<ckpt> "
            f"int8=true calib=<run>/splits/train.csv calib_n={args.calib_n} int8_weights=<mode>` (the export's own "
            "check then ran on other train images), and every image of the run's validation split classified "
            "through `Predictor` by each runtime:",
            "",
            "| checkpoint | model | runtime | val images | accuracy | agreement with PyTorch |",
            "|---|---|---|---:|---:|---:|",
        ]
        for r in trained:
            run = Path(r["checkpoint"]).parent.parent.name
            lines.append(
                f"| {run} | {r['model']} | {r['runtime']} | {r['n']} | {r['accuracy']:.3f} | {r['agreement']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The models, input size, batch, threads, int8 and the trained checkpoints to check."""
    parser.add_argument("--models", nargs="+", default=["densenet121", "resnet50"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--int8", action="store_true", help="also static int8 quantisation (ONNX Runtime QDQ)")
    parser.add_argument("--trained", nargs="*", type=Path, default=[], help="trained .ckpt files: int8 accuracy check")
    parser.add_argument("--calib-n", type=int, default=64, help="calibration images for --trained")
    parser.add_argument(
        "--int8-weights", nargs="+", default=["reduced"], help="weight encodings for --trained: reduced full uint8"
    )


def run(args: argparse.Namespace) -> dict:
    """Every model under every runtime, and the trained checkpoints' int8 check; the section beside ``--out``."""
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = [row for name in args.models for row in bench_model(name, args)]
    trained = [
        row for ckpt in args.trained for row in trained_check(ckpt, args.threads, args.calib_n, args.int8_weights)
    ]
    command = " ".join(["python -m bench.perf.latency", *sys.argv[1:]])
    section = markdown(rows, trained, args, command, time.perf_counter() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(section, encoding="utf-8")
    return {"machine": machine(), "rows": rows, "trained": trained}


if __name__ == "__main__":
    main("latency", __doc__, add_arguments, run)
