"""CPU inference benchmark: PyTorch eager vs TorchScript vs ONNX Runtime (fp32, optionally int8), one run.

    python bench/latency.py [--models densenet121 resnet50] [--size 224] [--batch 8] [--threads 2] [--int8]

Measures single-image latency (median of ``--repeats`` calls) and batch throughput (images/s over
``--batch`` images, best of three) per model and runtime, on randomly initialised weights (speed does
not depend on them), and writes the table under "## CPU inference: eager vs TorchScript vs ONNX Runtime"
in docs/benchmarks.md (that section is replaced, the rest of the file is kept). Agreement with eager
PyTorch is measured on real X-rays from ../shared/data/darkcovidnet when present.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

# Passive OpenMP waiting: on a shared, oversubscribed CPU the default spin-waiting made eager PyTorch
# with 2 threads ~30x slower than with 1 (threads spin while their partner is descheduled).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lungnet.data.transforms import Normalize, build_transform, make_pipeline  # noqa: E402
from lungnet.models.registry import create_model  # noqa: E402

log = logging.getLogger("bench")
HEADING = "## CPU inference: eager vs TorchScript vs ONNX Runtime"
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


def runtimes(model: torch.nn.Module, example: torch.Tensor, tmp: Path, threads: int, int8: bool, calib):
    """name -> callable(batch tensor) -> logits ndarray, for each runtime."""
    import onnxruntime as ort

    out: dict[str, Callable[[torch.Tensor], np.ndarray]] = {}

    def eager(x):
        with torch.no_grad():
            return model(x).numpy()

    out["PyTorch eager (no_grad)"] = eager
    cl_model = model.to(memory_format=torch.channels_last)

    def eager_cl(x):
        with torch.inference_mode():
            return cl_model(x.contiguous(memory_format=torch.channels_last)).numpy()

    out["PyTorch eager, channels_last + inference_mode"] = eager_cl
    model.to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))

    def script(x):
        with torch.inference_mode():
            return frozen(x).numpy()

    out["TorchScript (trace + freeze + optimize_for_inference)"] = script
    onnx_path = tmp / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(onnx_path),
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
        )
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # passive, like OpenMP above
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    out["ONNX Runtime fp32 (ORT_ENABLE_ALL)"] = lambda x: session.run(None, {"image": x.numpy()})[0]
    if int8:
        q_session = _int8_session(onnx_path, tmp, opts, calib)
        out["ONNX Runtime int8 (static QDQ, per-channel)"] = lambda x: q_session.run(None, {"image": x.numpy()})[0]
    return out


def _int8_session(onnx_path: Path, tmp: Path, opts, calib: torch.Tensor):
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"image": calib[i : i + 1].numpy()} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    pre = tmp / "model.pre.onnx"
    quant_pre_process(str(onnx_path), str(pre))
    q_path = tmp / "model.int8.onnx"
    quantize_static(
        str(pre),
        str(q_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return ort.InferenceSession(str(q_path), opts, providers=["CPUExecutionProvider"])


def bench_model(name: str, args) -> list[dict]:
    """One row per runtime for model ``name``."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, image_size=args.size).eval()
    single = torch.randn(1, 3, args.size, args.size)
    batch = torch.randn(args.batch, 3, args.size, args.size)
    real = real_images(model, args.size, 16)
    calib = real if real is not None else torch.randn(16, 3, args.size, args.size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fns = runtimes(model, single, Path(tmp), args.threads, args.int8, calib)
        with torch.no_grad():
            reference = model(real).numpy() if real is not None else None
        for label, fn in fns.items():
            lat = timed(lambda fn=fn: fn(single), args.repeats)
            thr = timed(lambda fn=fn: fn(batch), 3)
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
    return f"{model}, {cpus} CPU(s) visible (lscpu), load average at the end {load}"


def markdown(rows: list[dict], args, command: str, elapsed: float) -> str:
    """The section text (heading, command, machine, table, verdict)."""
    import onnxruntime

    lines = [
        HEADING,
        "",
        f"Run {datetime.datetime.now():%Y-%m-%d %H:%M} in {elapsed:.0f} s: `{command}`",
        "",
        f"- Machine: {machine()}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"{args.threads} intra-op threads everywhere, passive waiting "
        f"(OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, ORT allow_spinning=0).",
        f"- Input {args.size} px, 3 channels, randomly initialised weights (speed does not depend on them). "
        f"Latency: median of {args.repeats} single-image calls; throughput: batch of {args.batch}, best of 3.",
        "- Agreement: max |logit diff| and top-1 agreement with eager PyTorch on 16 real darkcovidnet X-rays.",
        "- Caveats: the weights are random, so top-1 agreement (a near-constant random head) says little about "
        "int8 accuracy; check agreement on a trained checkpoint before deploying int8. On a shared CPU (see the "
        "load average) absolute numbers are a fraction of a dedicated machine's and ratios are noisy.",
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
    lines += ["", "Fastest path per model against eager PyTorch (target: at least 2x throughput):", ""]
    for name in dict.fromkeys(r["model"] for r in rows):
        best = max((r for r in rows if r["model"] == name), key=lambda r: r["throughput"])
        verdict = "met" if best["speedup"] >= 2 else "NOT met"
        lines.append(f"- {name}: {best['runtime']}, {best['speedup']:.2f}x: 2x target {verdict}.")
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replaces this benchmark's section in ``path`` (or appends it), keeping every other section."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    start = text.find(HEADING)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        nxt = text.find("\n## ", start + len(HEADING))
        text = text[:start] + section + ("\n" + text[nxt + 1 :] if nxt >= 0 else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["densenet121", "resnet50"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--int8", action="store_true", help="also static int8 quantisation (ONNX Runtime QDQ)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = [row for name in args.models for row in bench_model(name, args)]
    command = " ".join(["python bench/latency.py", *sys.argv[1:]])
    write_section(args.out, markdown(rows, args, command, time.perf_counter() - start))
    log.info("Wrote %s", args.out)


if __name__ == "__main__":
    main()
