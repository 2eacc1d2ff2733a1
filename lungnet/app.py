"""A small local web app and HTTP API around a trained model (research use only, not a diagnostic device).

``lungnet-app ckpt=<best.ckpt|model.onnx> [port=8000] [host=127.0.0.1] [max_upload_mb=20]`` (or
``python -m lungnet.app ...``; options and defaults: ``conf/app.yaml``, ``--help``)

- ``GET /``: one HTML page (inline CSS/JS, nothing fetched from elsewhere): upload an image or DICOM,
  see the class probabilities and the Grad-CAM overlay.
- ``POST /predict`` (multipart, field ``file``; ``?heatmap=true`` adds a PNG overlay as base64):
  JSON probabilities. Errors are JSON ``{"error": ...}`` with 400 (no file), 413 (too large),
  422 (not a readable image) or 501 (heatmap asked of an export).
- ``GET /health``: model name and labels.

Uploads stay in memory and a private temporary folder; the client's file name is only echoed back
(its suffix is used only when it is one of the known image suffixes). Nothing from the request is
evaluated or used as a path.
"""

from __future__ import annotations

import base64
import io
import logging
import tempfile
import threading
from importlib import resources
from pathlib import Path, PurePath

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from omegaconf import DictConfig
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from lungnet.data.images import IMAGE_SUFFIXES
from lungnet.inference import Predictor

log = logging.getLogger(__name__)

NOTICE = "Research use only — not a diagnostic device."
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers on top of the file itself


class UploadTooLarge(Exception):
    """The request body passed the configured limit."""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def safe_name(name: str | None) -> str:
    """The client's file name reduced to a printable base name (display only, never a path)."""
    base = PurePath((name or "upload").replace("\\", "/")).name
    cleaned = "".join(ch for ch in base if ch.isprintable())[:120]
    return cleaned if cleaned.strip(". ") else "upload"


def _png_base64(rgb: np.ndarray, max_side: int) -> str:
    img = Image.fromarray(rgb)
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class Service:
    """Classifies uploaded bytes with one `Predictor` (one request at a time: CAM hooks are per model).

    Args:
        predictor: the loaded model.
        explain: CAM method for heatmaps (None: heatmaps off).
        alpha: overlay opacity.
        overlay_max_side: overlays are downscaled to this side for transfer.
    """

    def __init__(
        self, predictor: Predictor, explain: str | None = "gradcam", alpha: float = 0.45, overlay_max_side: int = 1024
    ) -> None:
        self.predictor = predictor
        self.explain = explain
        self.alpha = alpha
        self.overlay_max_side = overlay_max_side
        self.lock = threading.Lock()

    def classify(self, data: bytes, name: str, heatmap: bool) -> tuple[int, dict]:
        """(HTTP status, JSON body) for one uploaded file."""
        if heatmap and (self.predictor.torch_model is None or not self.explain):
            return 501, {"error": f"Heatmaps are not available for this model ({self.predictor.kind})"}
        suffix = PurePath(name).suffix.lower()
        suffix = suffix if suffix in IMAGE_SUFFIXES else ""
        with tempfile.TemporaryDirectory(prefix="lungnet-upload-") as tmp, self.lock:
            path = Path(tmp) / f"upload{suffix}"
            path.write_bytes(data)
            (pred,) = self.predictor.predict_iter([path], explain=self.explain if heatmap else None)
        if not pred.ok:
            reason = str(pred.row.get("error", "unreadable")).replace(str(path), name)
            return 422, {"error": f"{name} could not be read as an image or DICOM file: {reason}", "file": name}
        labels = self.predictor.labels
        row = pred.row
        body = {
            "file": name,
            "model": self.predictor.prep.model,
            "labels": labels,
            "multilabel": self.predictor.prep.multilabel,
            "probabilities": {lab: float(p) for lab, p in zip(labels, pred.probs, strict=True)},
            "predicted": row["predicted"],
            "thresholds": list(self.predictor.prep.thresholds) if self.predictor.prep.thresholds else None,
            "precision": self.predictor.precision,
            "notice": NOTICE,
        }
        if "decision" in row:
            body["decision"] = row["decision"]
        if heatmap:
            body["heatmap_png_base64"] = _png_base64(self.predictor.overlay(pred, self.alpha), self.overlay_max_side)
            body["heatmap_method"] = self.explain
        return 200, body


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


def create_app(
    predictor: Predictor,
    max_upload_mb: float = 20.0,
    explain: str | None = "gradcam",
    alpha: float = 0.45,
    overlay_max_side: int = 1024,
) -> FastAPI:
    """The FastAPI application (page, ``/predict``, ``/health``) around ``predictor``."""
    service = Service(predictor, explain, alpha, overlay_max_side)
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
    app = FastAPI(title="lungnet", description=NOTICE, docs_url=None, redoc_url=None, openapi_url=None)

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
        return {"status": "ok", **predictor.describe()}

    @app.post("/predict")
    async def predict(request: Request, heatmap: bool = False) -> JSONResponse:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_bytes + MULTIPART_SLACK:
            await _drain(request, drain_cap)
            return _error(413, too_large)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return _error(400, "Send the image as multipart/form-data in a field named 'file'")
        parser = MultiPartParser(request.headers, _limited(request, max_bytes + MULTIPART_SLACK), max_files=1)
        try:
            form = await parser.parse()
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
        status, body = await run_in_threadpool(service.classify, data, safe_name(upload.filename), heatmap)
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
    )
    method = (cfg.get("explain") or {}).get("method")  # the explain group; explain=null turns heatmaps off
    explain = method if predictor.torch_model is not None else None
    app = create_app(predictor, float(cfg.max_upload_mb), explain, float(cfg.alpha), int(cfg.overlay_max_side))
    log.info("%s Serving %s on http://%s:%d", NOTICE, cfg.ckpt, cfg.host, int(cfg.port))
    uvicorn.run(app, host=str(cfg.host), port=int(cfg.port), log_level=str(cfg.log_level))


if __name__ == "__main__":
    from lungnet.cli import app as command

    command()
