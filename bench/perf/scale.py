"""How lungnet's data-side costs grow with the number of images (issue #27 §6): a scale benchmark anyone can rerun.

For each size N a seeded NIH-like set is generated (`bench.common.nih_like`: real NIH radiographs of
``../shared/data/nih`` at ``--size`` px with a seeded rotation, shift, gain and flip; NIH layout and CSV) and these
stages are timed, in CPU seconds (user + system of this process and its waited-for children, `resource.getrusage`;
loader stages read their own process tree) and wall seconds:

- ``scan_first``: the first command's setup (`LungDataModule.load_table` as train.py calls it, nih14 source, empty
  manifest folder, ``data.scan_workers=1`` so that all the scan's CPU is this process's).
- ``setup_second``: the next command's setup on unchanged data (the manifest is read), the median of three.
- ``near_duplicates``: the near-duplicate search of the set against itself on the manifest's dHashes (threshold 12).
- ``store_build``, ``epoch_store``, ``epoch_direct``: one training epoch's loading, no model: building the prepared
  store, then every image through the training dataset (augment=xray, ``--image-size``) from the store and from the
  files (`bench.perf.loader`'s in-process measure: one loader worker's work).
- ``finish``: the steps after training (`lungnet.evaluation.after_training.finish_training`), timed inside a
  ``train.py`` run of simple_cnn for ``--train-batches`` batches of one epoch (``data.num_workers=0``;
  ``--train-overrides`` adds overrides, e.g. ``test=false ood.fit_max=5000``); ``finish_scoring``: its model outputs
  (test, the OOD gate's training sample, val when its validation pass is not reused, and the one batch that checks
  it: the part DDP ranks share, with the images of each); ``finish_loading``: the CPU of fetching those batches
  (reading, decoding, transforms: the rest of ``finish_scoring`` is the model); ``finish_1rank``: the whole
  `lungnet.train.finish.finish` (loading the checkpoint, the check of the kept validation pass, then ``finish``).
- ``finish_<k>rank`` (``--ranks k``): the same run with ``trainer=ddp_cpu trainer.devices=k``, rank 0's CPU over its
  `lungnet.train.finish.finish` (its shard of the scoring, `lungnet.evaluation.sharded`, then the rest alone);
  ``finish_<k>rank_scoring``: its shard's scoring; ``finish_<k>rank_rest``: its `finish_training` on the gathered
  outputs.
- ``evaluate``: ``python evaluate.py ckpt=<that run's best.ckpt> split=test`` (defaults), whole command.
- ``predict``: ``python predict.py ckpt=... input=<images folder>`` on every image of the set, whole command.

Then growth exponents (least squares of log seconds on log N, over the sizes run) and the extrapolation to 112k
and 224k images; the JSON record and a markdown table beside it (.md) are written to ``--out`` (after every size).
The record's ``finish_figure`` (`finish_figure`): the finish's CPU as a fraction of one epoch's loading, measured
per size and extrapolated to 112k with at most ``ood.fit_max`` training images scored, for 1 and k ranks. Its
``rest`` (calibration and reports) is mostly constant at the sizes run here, so its exponent underestimates it at
112k: `bench.perf.finish_rest` measures the rest at NIH's full split sizes instead (use that figure).

    python -m bench.perf.scale --sizes 1000 4000 16000 --size 256
    python -m bench.perf.scale --sizes 1000 4000 16000 64000 --size 256   # 64k: ~1 h on 2 cores (15 min generating)
    python -m bench.perf.scale --sizes 200 --size 128   # smoke check, every stage
    python -m bench.perf.scale --sizes 1000 4000 --skip evaluate predict --ranks 2   # the finish, 1 and 2 ranks
    python -m bench.perf.scale --sizes 1000 4000 --skip evaluate predict --train-overrides test=false ood.fit_max=5000
    python -m bench.perf.scale --merge a.json b.json --out all.json   # unite runs, refit
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common.cli import ROOT, main, record, write_record
from bench.common.proc_cpu import reaped_cpu_seconds as cpu
from bench.common.scale_figures import figures, fin_rest

log = logging.getLogger("bench.scale")
STAGES = ("scan_first", "setup_second", "near_duplicates", "store_build", "epoch_store", "epoch_direct", "finish")
SCORED = ("val", "test", "train")  # the splits the finish scores (train: the OOD gate's sample)
COMMANDS = ("evaluate", "predict")
TARGET_N = (112_000, 224_000)


def own_cpu() -> float:
    """CPU seconds (user + system) of this process alone."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def timed(fn, clock=cpu) -> tuple[object, dict]:
    """``fn()``'s result and its ``{"cpu_s", "wall_s"}`` (CPU seconds by ``clock``)."""
    c0, w0 = clock(), time.perf_counter()
    out = fn()
    return out, {"cpu_s": clock() - c0, "wall_s": time.perf_counter() - w0}


def setup_stages(root: Path, manifests: Path) -> tuple[dict, object]:
    """First scan and second setup of the data set (train.py's `load_table`), and the near-duplicate search."""
    from lungnet.data.datamodule import LungDataModule
    from lungnet.data.near_duplicates import hash_matrix, near_pairs_within
    from lungnet.models.specs import ModelSpec

    cfg = {"name": "nih14", "source": "nih14", "root": str(root), "scan_workers": 1}
    cfg.update(val_fraction=0.15, test_fraction=0.15)  # as conf/data/nih14.yaml
    spec = ModelSpec("bench", "bench", input_size=64)
    out = {}
    _, out["scan_first"] = timed(lambda: LungDataModule(cfg, spec, cache_dir=str(manifests)).load_table())
    seconds = [timed(lambda: LungDataModule(cfg, spec, cache_dir=str(manifests)).load_table()) for _ in range(3)]
    table = seconds[0][0]
    out["setup_second"] = sorted((took for _, took in seconds), key=lambda took: took["cpu_s"])[1]  # median of 3
    hashes = table["dhash"].fillna("").astype(str)
    bits = hash_matrix(hashes[hashes.str.len() == 64])
    pairs, out["near_duplicates"] = timed(lambda: near_pairs_within(bits, 12))
    out["near_duplicates"]["pairs"] = int(len(pairs))
    return out, table


def loading_stages(root: Path, image_size: int, store_dir: Path) -> dict:
    """One epoch's loading, store and direct path, through bench.perf.loader's in-process measure."""
    from bench.perf.loader import measure

    paths = sorted((root / "images").glob("*.png"))
    # a 3-channel model's input (timm's default), as bench.perf.loader measures by default
    args = argparse.Namespace(image_size=image_size, augment="xray", batch_size=32, workers=-1, passes=1, in_chans=3)
    out = {}
    for mode in ("store", "direct"):
        got = measure(mode, paths, args, store_dir)
        cpu_s = got["cpu_ms_per_image"] * len(paths) / 1000
        out[f"epoch_{mode}"] = {"cpu_s": cpu_s, "wall_s": len(paths) / got["wall_images_per_s_0_workers"]}
        if mode == "store":
            out["store_build"] = {"cpu_s": got["build_cpu_ms_per_image"] * len(paths) / 1000, "wall_s": got["build_s"]}
    return out


def run_command(argv: list[str], env: dict, log_file: Path) -> dict:
    """Runs a lungnet command (a child of this process), its output to ``log_file``; CPU and wall seconds."""
    with open(log_file, "w") as fh:
        done, took = timed(lambda: subprocess.run(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False))
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed (exit {done.returncode}); its output: {log_file}")
    return took


def command_stages(root: Path, work: Path, args) -> dict:
    """Trains simple_cnn briefly (timing the steps after training inside), then evaluate.py and predict.py."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    env.update(OMP_NUM_THREADS="1", LUNGNET_CACHE_DIR=str(work / "store"), LUNGNET_MANIFEST_DIR=str(work / "manifests"))
    finish_json = work / "finish.json"
    env["BENCH_SCALE_FINISH"] = str(finish_json)
    common = [f"paths.log_dir={work / 'runs'}", "data.num_workers=0"]
    train = [sys.executable, "-m", "bench.perf.scale", "train-child", "data=nih14", f"data.root={root}"]
    train += [
        "model=simple_cnn",
        "trainer=cpu",
        "trainer.max_epochs=1",
        f"+trainer.limit_train_batches={args.train_batches}",
    ]
    train += ["trainer.enable_progress_bar=false", "data.scan_workers=1", *common, *args.train_overrides]
    out = {"train": run_command(train, env, work / "train.log")}
    out.update(json.loads(finish_json.read_text()))
    out["finish_forward"] = forward_cost(next((work / "runs").rglob("best.ckpt")), out["finish_scoring"])
    for k in args.ranks:  # the same run on k DDP processes: rank 0's finish
        ddp = [a if a != "trainer=cpu" else "trainer=ddp_cpu" for a in train] + [f"trainer.devices={k}"]
        ddp = [a if not a.startswith("paths.log_dir=") else f"paths.log_dir={work / f'runs-{k}'}" for a in ddp]
        finish_json.unlink()
        run_command(ddp, env, work / f"train-{k}.log")
        out.update(json.loads(finish_json.read_text()))
    ckpt = next((work / "runs").rglob("best.ckpt"))
    if "evaluate" not in args.skip:
        evaluate = [sys.executable, str(ROOT / "evaluate.py"), f"ckpt={ckpt}", "split=test", *common]
        out["evaluate"] = run_command(evaluate, env, work / "evaluate.log")
    if "predict" not in args.skip:
        predict = [sys.executable, str(ROOT / "predict.py"), f"ckpt={ckpt}", f"input={root / 'images'}", common[0]]
        out["predict"] = run_command(predict, env, work / "predict.log")
    return out


def forward_cost(ckpt: Path, scoring: dict) -> dict:
    """The model's part of ``finish_scoring``: the checkpoint's forward pass with the OOD gate's inputs on a batch
    of 32 blank images at its input size (this process, ``OMP_NUM_THREADS=1``; after one untimed batch), per image
    times the images scored."""
    import torch

    from lungnet.artifacts.checkpoint import load_model
    from lungnet.scoring.outputs import logits_and_gate_inputs

    model = load_model(ckpt).model.eval()
    size = int(load_model(ckpt).spec.input_size)
    chans = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    x = torch.zeros(32, chans, size, size)

    def forward() -> None:
        with torch.no_grad():
            logits_and_gate_inputs(model, x)

    forward()
    _, took = timed(lambda: [forward() for _ in range(3)])
    images = sum(scoring.get(f"{s}_images", 0.0) for s in (*SCORED, "probe"))
    per_image = {k: v / (3 * len(x)) for k, v in took.items()}
    return {**{k: v * images for k, v in per_image.items()}, "ms_per_image": per_image["cpu_s"] * 1000}


def train_child() -> None:
    """``train.py`` with the steps after training timed on rank 0 (CPU of this process alone: its loaders have no
    workers, and under DDP the other ranks are its children, counted once reaped; wall; the stages ``finish*`` of the
    module docstring), the figures written to ``$BENCH_SCALE_FINISH``.
    Under DDP the other ranks run plain ``train.py`` (Lightning starts them as ``python train.py <overrides>``)."""
    import lungnet.evaluation.decisions as decisions
    import lungnet.evaluation.pipeline as pipeline
    import lungnet.train.finish as finishing
    import lungnet.train.training as training
    import lungnet.train.val_outputs as val_outputs
    from lungnet.commands.train import main as train
    from lungnet.evaluation import sharded

    stages: dict[str, dict] = {}

    def timing(one: str, ranks: str, fn, scoring: bool = False):
        """``fn`` timed into the stage ``one`` in a single process, ``ranks`` (``{k}``: the world size) under DDP."""

        def wrapped(*a, **k):
            result, took = timed(lambda: fn(*a, **k), own_cpu)  # under DDP the other ranks are our children
            world = sharded.world_size()
            got = stages.setdefault(one if world == 1 else ranks.format(k=world), {"cpu_s": 0.0, "wall_s": 0.0})
            got.update(cpu_s=got["cpu_s"] + took["cpu_s"], wall_s=got["wall_s"] + took["wall_s"])
            if scoring:
                got[f"{result.name}_images"] = got.get(f"{result.name}_images", 0) + len(result.paths)
            Path(os.environ["BENCH_SCALE_FINISH"]).write_text(json.dumps(stages))
            return result

        return wrapped

    def loading(fn):
        """``fn`` (the output loop) with the CPU of fetching its batches (``finish_loading``: reading, decoding,
        transforms; the model's share of ``finish_scoring`` is the rest) timed."""

        def batches(loader):
            world = sharded.world_size()
            name = "finish_loading" if world == 1 else f"finish_{world}rank_loading"
            fetched, total = iter(loader), stages.setdefault(name, {"cpu_s": 0.0, "wall_s": 0.0})
            while True:
                got, took = timed(lambda: next(fetched, None), own_cpu)
                total.update(cpu_s=total["cpu_s"] + took["cpu_s"], wall_s=total["wall_s"] + took["wall_s"])
                if got is None:
                    return
                yield got

        return lambda model, loader, *a, **k: fn(model, batches(loader), *a, **k)

    for module in (pipeline, decisions, sharded, val_outputs):  # every call of the output loop the finish makes
        scoring = timing("finish_scoring", "finish_{k}rank_scoring", loading(module.model_outputs), scoring=True)
        module.model_outputs = scoring
    finishing.finish_training = timing("finish", "finish_{k}rank_rest", finishing.finish_training)
    training.finish = timing("finish_1rank", "finish_{k}rank", training.finish)
    sys.argv = [str(ROOT / "train.py"), *sys.argv[2:]]
    if "trainer=ddp_cpu" in sys.argv:
        sys.modules["__main__"].__spec__ = None  # Lightning starts the other ranks as python <sys.argv[0]> ...
    train()


def finish_figure(results: dict[int, dict], fits: dict, ranks: list[int], fit_max: int | None = None) -> dict:
    """The finish's CPU (the whole `lungnet.train.finish.finish`: ``finish_1rank``) over one epoch's loading
    (``epoch_direct``, and ``epoch_store``): measured per size, and at 112k images extrapolated. There the scoring
    costs the largest size's CPU per image times the images scored (val and test as in the measured splits, the
    training split's share capped at ``fit_max``: ``ood.fit_max`` of ``--train-overrides``, else its default), the
    rest of the finish grows with its exponent; k ranks share the scoring and one epoch's loading, rank 0 alone does
    the rest."""
    from lungnet.schema.train import OodFitConfig

    sizes = [n for n in sorted(results) if {"finish_1rank", "finish_scoring"} <= set(results[n])]
    if not sizes:
        return {}
    figure: dict = {"measured": {}, "fit_max": fit_max or OodFitConfig.fit_max}
    for n in sizes:
        got, row = results[n], {}
        for epoch in ("epoch_direct", "epoch_store"):
            if epoch in got:
                row[f"1rank_over_{epoch}"] = got["finish_1rank"]["cpu_s"] / got[epoch]["cpu_s"]
                if "finish_forward" in got:  # the finish less the model's forward passes
                    less = got["finish_1rank"]["cpu_s"] - got["finish_forward"]["cpu_s"]
                    row[f"1rank_without_forward_over_{epoch}"] = less / got[epoch]["cpu_s"]
                for k in ranks:
                    if f"finish_{k}rank" in got:  # rank 0's finish over a rank's 1/k of the epoch
                        row[f"{k}rank_over_{epoch}"] = got[f"finish_{k}rank"]["cpu_s"] * k / got[epoch]["cpu_s"]
        figure["measured"][n] = row
    if len(sizes) > 1:
        figure["at_112k"] = extrapolated(results, sizes, fits, ranks, figure["fit_max"])
    return figure


def extrapolated(results: dict[int, dict], sizes: list[int], fits: dict, ranks: list[int], fit_max: int) -> dict:
    """`finish_figure`'s ratios at 112k images (see there), for 1, the measured k and 8 ranks."""
    last = results[sizes[-1]]["finish_scoring"]
    scored = {s: last.get(f"{s}_images", 0.0) for s in SCORED}
    shares = {s: v / sizes[-1] for s, v in scored.items()}  # the train sample is the whole split below fit_max
    rest = [max(fin_rest(results[n]), 1e-6) for n in sizes]  # above 0 for the log
    b, a = np.polyfit(np.log(sizes), np.log(rest), 1)
    n = TARGET_N[0]
    probe = last.get("probe_images", 0.0)  # one batch of val checks the kept validation pass, whatever N
    images = (shares["val"] + shares["test"]) * n + min(shares["train"] * n, fit_max) + probe
    scoring = last["cpu_s"] / (sum(scored.values()) + probe) * images
    forward = results[sizes[-1]].get("finish_forward", {}).get("ms_per_image", 0.0) / 1000 * images
    rest_n = float(np.exp(a + b * np.log(n)))
    loading = results[sizes[-1]].get("finish_loading", {}).get("cpu_s", float("nan")) / (sum(scored.values()) + probe)
    loading *= images
    out = {"split_shares": shares, "images_scored": images, "scoring_cpu_s": scoring, "forward_cpu_s": forward}
    out["loading_cpu_s"] = loading  # the finish's own batches' reading, decoding and transforms
    out.update(rest_cpu_s=rest_n, rest_exponent=float(b))
    for stage in ("epoch_direct", "epoch_store"):
        if stage not in fits:
            continue
        epoch = out[f"{stage}_cpu_s"] = fits[stage][f"cpu_s_at_{n // 1000}k"]
        for k in sorted({1, *ranks, 8}):  # k ranks: each scores 1/k and loads 1/k of an epoch; rank 0 the rest
            out[f"{k}rank_over_{stage}"] = (scoring / k + rest_n) / (epoch / k)
            out[f"{k}rank_without_forward_over_{stage}"] = ((scoring - forward) / k + rest_n) / (epoch / k)
            out[f"{k}rank_loading_and_rest_over_{stage}"] = (loading / k + rest_n) / (epoch / k)
    return out


def one_size(n: int, args) -> dict:
    """Every stage at ``n`` images (the set is generated under ``--work`` and kept for reruns)."""
    from bench.common.nih_like import SOURCE, generate

    root = Path(args.work) / f"nih-{n}-{args.size}"
    if not (root / "Data_Entry_2017.csv").is_file():
        (_, took) = timed(lambda: generate(Path(args.src or SOURCE), root, n, args.size, args.seed))
        log.info("generated %d images at %d px in %.1f s", n, args.size, took["wall_s"])
    work = Path(tempfile.mkdtemp(prefix=f"scale-{n}-", dir=args.work))
    try:
        out, _ = setup_stages(root, work / "manifests")
        if "loading" not in args.skip:
            out.update(loading_stages(root, args.image_size, work / "store"))
        if "train" not in args.skip:
            out.update(command_stages(root, work, args))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    log.info("N=%d: %s", n, json.dumps({k: {m: round(v, 3) for m, v in d.items()} for k, d in out.items()}))
    return out


def exponents(results: dict[int, dict]) -> dict:
    """Per stage: the least-squares slope b and intercept of log(CPU s) = a + b log(N), and the extrapolations."""
    fits = {}
    stages = sorted({s for r in results.values() for s in r})
    for stage in stages:
        ns = [n for n in sorted(results) if stage in results[n] and results[n][stage]["cpu_s"] > 0]
        if len(ns) < 2:
            continue
        x = np.log(ns)
        y = np.log([results[n][stage]["cpu_s"] for n in ns])
        b, a = np.polyfit(x, y, 1)
        fits[stage] = {"exponent": float(b), "sizes": ns}
        fits[stage].update({f"cpu_s_at_{m // 1000}k": float(np.exp(a + b * np.log(m))) for m in TARGET_N})
    return fits


def table(results: dict[int, dict], fits: dict) -> str:
    """The markdown table: CPU (wall) seconds per stage and size, the exponent and the extrapolations."""
    sizes = sorted(results)
    known = (*STAGES, "train", *COMMANDS)
    stages = [s for s in known if any(s in r for r in results.values())]
    stages += sorted({s for r in results.values() for s in r} - set(known))  # finish_scoring, finish_<k>rank
    head = ["stage", *[f"N={n}" for n in sizes], "exponent", *[f"{m // 1000}k (extrap.)" for m in TARGET_N]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stage in stages:
        cells = [stage]
        for n in sizes:
            got = results[n].get(stage)
            cells.append(f"{got['cpu_s']:.2f} ({got['wall_s']:.1f})" if got else "")
        fit = fits.get(stage)
        cells.append(f"{fit['exponent']:.2f}" if fit else "")
        cells += [f"{fit[f'cpu_s_at_{m // 1000}k']:.3g}" if fit else "" for m in TARGET_N]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nCPU seconds (wall seconds); extrapolations in CPU seconds.\n"


def write(out: Path, args, results: dict[int, dict]) -> dict:
    """The JSON record (`bench.common.cli.record`: arguments, results, fits) and the markdown table beside it; the
    result it holds."""
    fits = exponents(results)
    figure = finish_figure(results, fits, list(args.ranks), overridden_fit_max(args.train_overrides))
    result = {"args": vars(args), "results": results, "fits": fits, "finish_figure": figure}
    result["figures"] = figures(results, fits, args.size, (*STAGES, "train", *COMMANDS, "finish_1rank"), TARGET_N)
    write_record(out, record("scale", result))
    out.with_suffix(".md").write_text(table(results, fits) + f"\nfinish_figure: {json.dumps(figure, indent=1)}\n")
    return result


def overridden_fit_max(overrides: list[str]) -> int | None:
    """``ood.fit_max`` as ``--train-overrides`` sets it (None: not set)."""
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("ood.fit_max=")]
    return int(given[-1]) if given else None


def merged(files: list[str]) -> dict[int, dict]:
    """The results of earlier runs' JSON files, per size (stages of one size from several files are united)."""
    results: dict[int, dict] = {}
    for name in files:
        try:
            got = json.loads(Path(name).read_text())
            got = got.get("result", got)["results"]  # a record, or a result file of before the record
            for n, stages in got.items():
                results.setdefault(int(n), {}).update(
                    {s: {k: float(v) for k, v in t.items()} for s, t in stages.items()}
                )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SystemExit(f"--merge {name}: not a bench.perf.scale result file ({exc})") from None
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sizes, the image and working resolutions, the work folder, the stages to skip, and --merge."""
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--size", type=int, default=256, help="px of the generated images")
    parser.add_argument("--image-size", type=int, default=224, help="the working resolution of the loading stages")
    parser.add_argument("--src", default=None, help="NIH sample to draw from (default ../shared/data/nih)")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "lungnet-scale"))
    parser.add_argument("--train-batches", type=int, default=2, help="training batches before the finish")
    parser.add_argument("--ranks", type=int, nargs="*", default=[], help="also the finish on k DDP processes")
    parser.add_argument(
        "--train-overrides", nargs="*", default=[], help="train.py overrides of the timed run, e.g. test=false"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["loading", "train", "evaluate", "predict"])
    parser.add_argument("--keep", action="store_true", help="keep manifests, stores and runs under --work")
    parser.add_argument("--merge", nargs="+", default=None, help="no run: unite these result files and refit")


def run(args: argparse.Namespace) -> dict:
    """Every size's stages (the record rewritten after each size: a long run keeps what it has), or the merged
    results of ``--merge``; then the fits."""
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.merge:
        result = write(args.out, args, merged(args.merge))
    results: dict[int, dict] = {}
    for n in [] if args.merge else args.sizes:
        results[n] = one_size(n, args)
        result = write(args.out, args, results)
    log.info("\n%s", args.out.with_suffix(".md").read_text())
    return result


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if sys.argv[1:2] == ["train-child"]:
        train_child()
    else:
        main("scale", __doc__, add_arguments, run)
