"""A small local web app and HTTP API around a trained model (research use only, not a diagnostic device).

``lungnet-app ckpt=<best.ckpt|model.onnx> [port=8000] [host=127.0.0.1] [max_upload_mb=20]`` (or
``python -m lungnet.app ...``; options and defaults: ``conf/app.yaml``, ``--help``). An ensemble
(``ckpt=[a.ckpt,b.ckpt]``, a multirun directory or an ``ensemble.json``, `lungnet.artifacts.ensemble`) is served as
one model;
the page, ``/health``, ``/model`` and every answer name its members (it has no heatmaps: they are per model).

- ``GET /``: one HTML page (inline CSS/JS, nothing fetched from elsewhere): the model, its training data and
  validation metrics at the top; upload an image or DICOM, see the decision, the prediction set, an OOD warning,
  the calibrated probabilities, and the original image beside its Grad-CAM overlay with a colour scale.
- ``POST /predict`` (multipart, field ``file``; ``?heatmap=true`` adds the image and a PNG overlay as base64):
  JSON decision (or ``abstain`` with a reason), prediction set, OOD flag and calibrated probabilities, from the
  checkpoint's decision file (``decision=auto|none|<file>``). Errors are JSON ``{"error": ...}`` with 400 (no
  file), 413 (too large), 422 (not a readable image) or 501 (heatmap asked of an export).
- ``GET /health``: model name and labels; ``GET /model``: the model card's summary (model, training data,
  validation metrics) and the card; ``GET /docs``: the OpenAPI documentation (served locally, no CDN).
- No answer holds a server path: the model, decision and member files are named by base name and SHA-256
  (`public_facts`).

Uploads stay in memory and a private temporary folder; the client's file name is only echoed back
(its suffix is used only when it is one of the known image suffixes). Nothing from the request is
evaluated or used as a path. There is no authentication and no body-read timeout: the app warns at start
when ``host`` is not a loopback address (put a reverse proxy with both in front to serve others).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import ipaddress
import logging
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path, PurePath

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from omegaconf import DictConfig
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from lungnet.data.images import IMAGE_SUFFIXES
from lungnet.errors import CheckpointError, ConfigError
from lungnet.explain.overlay import heatmap_caption
from lungnet.serve.app_info import applied_thresholds, model_card_text, public_facts, summary_command
from lungnet.serve.inference import Predictor

log = logging.getLogger(__name__)

NOTICE = "Research use only — not a diagnostic device."
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers on top of the file itself


class UploadTooLarge(Exception):
    """The request body passed the configured limit."""


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def safe_name(name: str | None) -> str:
    """The client's file name reduced to a printable base name (display only, never a path)."""
    base = PurePath((name or "upload").replace("\\", "/")).name
    cleaned = "".join(ch for ch in base if ch.isprintable())[:120]
    return cleaned if cleaned.strip(". ") else "upload"


def _gray_rgb(image: np.ndarray) -> np.ndarray:
    """A decoded grayscale image in [0, 1] as RGB uint8 (the original beside the overlay)."""
    gray = np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def model_info(predictor: Predictor, facts: dict) -> dict:
    """What the page shows at the top: model, input, decision facts (``facts``: `public_facts`, no server paths)
    and the model-card summary; ``summary_missing``: without one, the command that writes it (`summary_command`)."""
    record = predictor.decision
    missing = summary_command(predictor, public=True)
    return {
        **facts,
        "summary": record.summary if record is not None else {},
        "summary_missing": f"{missing} writes it (in the model's folder)" if missing else None,
        "model_card": model_card_text(predictor),
        "notice": NOTICE,
    }


def _png_base64(rgb: np.ndarray, max_side: int) -> str:
    img = Image.fromarray(rgb)
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class Service:
    """Classifies uploaded bytes with one `Predictor`, one request at a time.

    One lock covers all of a request's work: decoding, the model, the heatmap, the overlay and its PNG. CAM hooks
    are per model, and memory stays that of one request whatever the number of clients: a 64 Mpx image decodes
    to about 0.3 GB of float pixels, and the overlay is made at ``overlay_max_side`` (the full decode is released
    once the model input is made). The app runs that work on one worker thread (`classify_async`): the C
    allocator keeps what a thread freed in that thread's arena, so the same work spread over the server's thread
    pool grew the process by about 0.6 GB per thread that had decoded a 64 Mpx image (docs/benchmarks.md).

    Args:
        predictor: the loaded model.
        explain: CAM method for heatmaps (None: heatmaps off).
        alpha: overlay opacity.
        overlay_max_side: overlays are downscaled to this side for transfer.
        max_queue: requests admitted at once (the one being classified and those waiting with their uploads in
            memory); more are answered 503 until one finishes.
    """

    def __init__(
        self,
        predictor: Predictor,
        *,
        explain: str | None,
        alpha: float,
        overlay_max_side: int,
        max_queue: int,
    ) -> None:
        if max_queue < 1:
            raise ConfigError(f"max_queue={max_queue}: admit at least 1 request (conf/app.yaml max_queue)")
        self.predictor = predictor
        self.facts = public_facts(predictor)  # hashed once: /health and every answer name files, never paths
        self.max_queue = max_queue
        self.admitted = 0  # changed on the event loop only
        self.explain = explain
        self.alpha = alpha
        self.overlay_max_side = overlay_max_side
        self.lock = threading.Lock()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lungnet-model")

    def full(self) -> bool:
        """True when `max_queue` requests are admitted already."""
        return self.admitted >= self.max_queue

    @contextlib.contextmanager
    def admission(self):
        """Holds one of the `max_queue` places from before the upload is read until its answer is made."""
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def classify_async(self, data: bytes, name: str, heatmap: bool) -> tuple[int, dict]:
        """`classify` on the service's one worker thread (requests queue there, in arrival order)."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, self.classify, data, name, heatmap)

    def classify(self, data: bytes, name: str, heatmap: bool) -> tuple[int, dict]:
        """(HTTP status, JSON body) for one uploaded file."""
        if heatmap and (self.predictor.torch_model is None or not self.explain):
            return 501, {"error": f"Heatmaps are not available for this model ({self.predictor.kind})"}
        suffix = PurePath(name).suffix.lower()
        suffix = suffix if suffix in IMAGE_SUFFIXES else ""
        with self.lock:
            return self._classify(data, name, suffix, heatmap)

    def _classify(self, data: bytes, name: str, suffix: str, heatmap: bool) -> tuple[int, dict]:
        with tempfile.TemporaryDirectory(prefix="lungnet-upload-") as tmp:
            path = Path(tmp) / f"upload{suffix}"
            path.write_bytes(data)
            explain = self.explain if heatmap else None
            try:
                (pred,) = self.predictor.predict_iter([path], explain=explain, image_max_side=self.overlay_max_side)
            except CheckpointError as exc:  # an output that is not finite: no probabilities, no decision
                log.error("%s", str(exc).replace(str(path), name))
                return 500, {"error": "The model gave no finite output for this image; it cannot classify (server log)"}
        if not pred.ok:
            reason = str(pred.row.get("error", "unreadable")).replace(str(path), name)
            return 422, {"error": f"{name} could not be read as an image or DICOM file: {reason}", "file": name}
        body = self.answer(pred, name)
        if heatmap:
            side = self.overlay_max_side
            body["heatmap_png_base64"] = _png_base64(self.predictor.overlay(pred, self.alpha), side)
            body["image_png_base64"] = _png_base64(_gray_rgb(pred.image), side)
            body["heatmap_method"] = self.explain
            body["heatmap_class"] = pred.row.get("heatmap_class")  # the decided class the heatmap explains
            body["heatmap_caption"] = heatmap_caption(pred.row, name, self.explain)  # as predict.py's PNGs
        return 200, body

    def answer(self, pred, name: str) -> dict:
        """The JSON answer for one classified image (decision, set, OOD flag, calibrated probabilities)."""
        labels = self.predictor.labels
        row, record = pred.row, self.predictor.decision
        body = {
            "file": name,
            "model": self.predictor.prep.model,
            "labels": labels,
            "multilabel": self.predictor.prep.multilabel,
            "probabilities": {lab: float(p) for lab, p in zip(labels, pred.probs, strict=True)},
            "predicted": row["predicted"],
            "thresholds": applied_thresholds(record, labels, self.predictor.prep.multilabel),
            "precision": self.predictor.precision,
            "notice": NOTICE,
        }
        if "decision" in row:
            body["decision"] = row["decision"]
        if self.predictor.members:
            body["members"] = self.predictor.members
        if record is not None:
            body.update(
                decision_reason=row.get("decision_reason") or "",
                decision_note=row.get("decision_note") or "",  # an empty prediction set (`lungnet.scoring.referral`)
                prediction_set=[x for x in str(row.get("prediction_set") or "").split("|") if x],
                set_level=1 - record.alpha if record.alpha is not None else None,
                ood=row.get("ood"),
                ood_score=row.get("ood_score"),
                calibrated=record.temperature is not None,
                decision_file=self.facts["decision_file"],
                decision_sha256=self.facts["decision_sha256"],
                decision_split=record.split,
            )
        return body


async def _limited(request: Request, limit: int):
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise UploadTooLarge
        yield chunk


async def _drain(request: Request, cap: int) -> None:
    """Reads and drops the rest of a refused body (up to ``cap``) so the client gets the 413, not a reset."""
    dropped = 0
    try:
        async for chunk in request.stream():
            dropped += len(chunk)
            if dropped > cap:
                break
    except ClientDisconnect:
        log.debug("client went away while a refused upload was drained")


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "(unknown)"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for anything else, names included."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_exposed(host: str) -> bool:
    """Warns when the app listens beyond this machine (it has no authentication); returns whether it warned."""
    if is_loopback(host):
        return False
    log.warning(
        "host=%s is not a loopback address: anyone who can reach this machine can upload images to the model. "
        "The app has no authentication and no body-read timeout; put it behind a reverse proxy that adds both, "
        "or keep host=127.0.0.1",
        host,
    )
    return True


def create_app(
    predictor: Predictor,
    *,
    max_upload_mb: float,
    explain: str | None,
    alpha: float,
    overlay_max_side: int,
    max_queue: int,
) -> FastAPI:
    """The FastAPI application (page, ``/predict``, ``/health``) around ``predictor``; the options are
    ``conf/app.yaml``'s (their defaults are stated there), as `Service` takes them."""
    service = Service(predictor, explain=explain, alpha=alpha, overlay_max_side=overlay_max_side, max_queue=max_queue)
    busy = f"Busy: {max_queue} requests are being classified or waiting; try again in a few seconds"
    max_bytes = int(max_upload_mb * 1024 * 1024)
    drain_cap = max(64 * 1024 * 1024, 4 * max_bytes)
    too_large = f"File too large: the limit is {max_upload_mb:g} MB"
    page = (
        resources.files("lungnet")
        .joinpath("static/index.html")
        .read_text(encoding="utf-8")
        .replace("{{MAX_BYTES}}", str(max_bytes))
        .replace("{{MAX_MB}}", f"{max_upload_mb:g}")
        .replace("{{NOTICE}}", NOTICE)
    )
    app = FastAPIOffline(title="lungnet", description=NOTICE, redoc_url=None)  # /docs without a CDN
    info = {**model_info(predictor, service.facts), "heatmaps": bool(explain) and predictor.torch_model is not None}
    if info["summary_missing"]:  # the log names the model by its full path, answers by base name
        log.warning("No validation summary to show: %s writes it", summary_command(predictor, public=False))

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        headers = {
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "img-src data:; connect-src 'self'; form-action 'self'",
            "X-Content-Type-Options": "nosniff",
        }
        return HTMLResponse(page, headers=headers)

    @app.get("/health")
    def health() -> dict:
        """Model file, labels, runtime, precision and the decision file in use (names and SHA-256, no paths)."""
        return {"status": "ok", **service.facts}

    @app.get("/model")
    def model() -> dict:
        """Model name, training data and validation metrics (the model card's summary), and the model card."""
        return info

    @app.post("/predict")
    async def predict(request: Request, heatmap: bool = False) -> JSONResponse:
        """Classify one image (multipart field ``file``): decision at the operating point (or ``abstain`` with a
        reason), prediction set, OOD flag and score, calibrated probabilities; ``heatmap=true`` adds the original
        image and a Grad-CAM overlay as base64 PNGs; 503 while `max_queue` requests are admitted."""
        if service.full():
            await _drain(request, drain_cap)
            return _error(503, busy, {"Retry-After": "5"})
        with service.admission():
            return await _predict(request, heatmap)

    async def _predict(request: Request, heatmap: bool) -> JSONResponse:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_bytes + MULTIPART_SLACK:
            await _drain(request, drain_cap)
            return _error(413, too_large)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return _error(400, "Send the image as multipart/form-data in a field named 'file'")
        parser = MultiPartParser(request.headers, _limited(request, max_bytes + MULTIPART_SLACK), max_files=1)
        try:
            form = await parser.parse()
        except ClientDisconnect:
            log.warning("Client %s disconnected during its upload; request dropped", _client(request))
            return _error(400, "Upload interrupted")  # nobody reads it; uvicorn drops a send after a disconnect
        except UploadTooLarge:
            await _drain(request, drain_cap)
            return _error(413, too_large)
        except MultiPartException as exc:
            return _error(400, f"Malformed upload: {exc.message}")
        upload = form.get("file")
        try:
            if not isinstance(upload, UploadFile):
                return _error(400, "No file uploaded: send it in a multipart field named 'file'")
            data = await upload.read()
        finally:
            await form.close()
        if len(data) > max_bytes:
            return _error(413, too_large)
        if not data:
            return _error(422, f"{safe_name(upload.filename)}: empty file")
        status, body = await service.classify_async(data, safe_name(upload.filename), heatmap)
        return JSONResponse(body, status_code=status)

    return app


def serve(cfg: DictConfig) -> None:
    """Loads ``cfg.ckpt`` and serves it with uvicorn until stopped (``conf/app.yaml`` holds the options)."""
    import uvicorn

    predictor = Predictor(
        cfg.ckpt,
        device=str(cfg.device),
        threads=cfg.threads,
        runtime=str(cfg.runtime),
        precision=str(cfg.precision),
        decision=cfg.decision,
        trust_export=bool(cfg.trust_export),
    )
    method = (cfg.get("explain") or {}).get("method")  # the explain group; explain=null turns heatmaps off
    explain = method if predictor.torch_model is not None else None
    options = {k: cfg[k] for k in ("max_upload_mb", "alpha", "overlay_max_side", "max_queue")}  # conf/app.yaml's
    app = create_app(predictor, explain=explain, **options)
    warn_if_exposed(str(cfg.host))
    what = predictor.prep.model + f" ({', '.join(predictor.members)})" if predictor.members else cfg.ckpt
    log.info("%s Serving %s on http://%s:%d", NOTICE, what, cfg.host, int(cfg.port))
    uvicorn.run(app, host=str(cfg.host), port=int(cfg.port), log_level=str(cfg.log_level))
