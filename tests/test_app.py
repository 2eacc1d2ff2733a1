"""The web app and HTTP API on a real server (free localhost port): urllib for the API, Chromium for the page."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from PIL import Image

from lungnet import cli
from lungnet.app import NOTICE, create_app, safe_name
from lungnet.inference import Predictor
from tests.conftest import ROOT, run_cli, shared
from tests.test_inference import LABELS, make_checkpoint

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
LIMIT_MB = 8.0  # the uncompressed DICOM (7.2 MB) fits, 9 MB does not
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt = make_checkpoint(tmp_path_factory.mktemp("app") / "best.ckpt", size=32, thresholds=[0.3, 0.5, 0.4])
    app = create_app(Predictor(ckpt), max_upload_mb=LIMIT_MB)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def post(url: str, filename: str | None, data: bytes, content_type: str | None = None) -> tuple[int, dict]:
    """multipart/form-data POST with one 'file' field (or a raw body when ``filename`` is None)."""
    if filename is None:
        body, ctype = data, content_type or "application/octet-stream"
    else:
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        ctype = f"multipart/form-data; boundary={boundary}"
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def xray() -> Path:
    return sorted((shared("darkcovidnet") / "Pneumonia").glob("*.jpg"))[0]


def test_api_predict_returns_probabilities(server):
    status, body = post(f"{server}/predict", "chest.jpg", xray().read_bytes())
    assert status == 200, body
    assert body["labels"] == LABELS and set(body["probabilities"]) == set(LABELS)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert body["predicted"] == max(body["probabilities"], key=body["probabilities"].get)
    assert "decision" in body and body["thresholds"] == [0.3, 0.5, 0.4]
    assert body["notice"] == NOTICE and "heatmap_png_base64" not in body


def test_api_heatmap_and_dicom(server):
    dcm = shared("dicom") / "RG1_UNCR.dcm"
    status, body = post(f"{server}/predict?heatmap=true", "../../etc/scan.dcm", dcm.read_bytes())
    assert status == 200, body
    assert body["file"] == "scan.dcm"  # the client's path is never used; only the base name is echoed
    png = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png_base64"])))
    assert png.mode == "RGB" and max(png.size) == 1024  # 1955x1841 overlay, downscaled for transfer
    assert abs(png.size[0] / png.size[1] - 1841 / 1955) < 0.01
    arr = np.asarray(png).astype(int)
    assert (np.abs(arr[..., 0] - arr[..., 2]) > 40).mean() > 0.05  # coloured heat, not just the gray X-ray


def test_api_errors_are_json_with_status_codes(server):
    status, body = post(f"{server}/predict", "notes.txt", b"this is not an x-ray")
    assert status == 422 and "notes.txt could not be read as an image or DICOM file" in body["error"]
    status, body = post(f"{server}/predict", "empty.png", b"")
    assert status == 422 and "empty file" in body["error"]
    status, body = post(f"{server}/predict", None, b"raw bytes")
    assert status == 400 and "multipart/form-data" in body["error"]
    status, body = post(f"{server}/predict", "big.png", b"\0" * int((LIMIT_MB + 1) * 1024 * 1024))
    assert status == 413 and body["error"] == f"File too large: the limit is {LIMIT_MB:g} MB"
    with urllib.request.urlopen(f"{server}/health", timeout=30) as resp:
        assert json.loads(resp.read())["labels"] == LABELS


def test_safe_name_drops_paths_and_control_characters():
    assert safe_name("C:\\Users\\x\\..\\a\x00b.png") == "ab.png"
    assert safe_name("/etc/passwd") == "passwd" and safe_name(None) == "upload" and safe_name("..") == "upload"


def test_cli_wires_the_checkpoint_and_port(tmp_path, monkeypatch):
    ckpt = make_checkpoint(tmp_path / "m.ckpt", size=32)
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    run_cli(cli.app, [f"ckpt={ckpt}", "port=8123", "max_upload_mb=3"], monkeypatch)
    assert seen["port"] == 8123 and seen["host"] == "127.0.0.1"
    assert {r.path for r in seen["app"].routes} >= {"/", "/predict", "/health"}
    with pytest.raises(SystemExit) as exc:
        run_cli(cli.app, ["port=1", "bogus=2"], monkeypatch)
    assert exc.value.code == 2


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium not installed at /usr/bin/chromium (.ci/extra installs it)")
def test_page_in_headless_chromium(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (.ci/extra installs it)")
    ARTIFACTS.mkdir(exist_ok=True)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            page.goto(server)
            assert "not a diagnostic device" in page.inner_text("#notice")
            page.set_input_files("#file", str(xray()))
            page.click("#submit")
            page.wait_for_selector("#overlay[src^='data:image/png;base64,']", timeout=60_000)
            names = page.locator("#labels li .name").all_inner_texts()
            assert sorted(names) == sorted(LABELS)
            assert page.locator("#overlay").evaluate("img => img.complete && img.naturalWidth") > 0
            page.screenshot(path=str(ARTIFACTS / "app_result.png"), full_page=True)

            page.set_input_files("#file", str(text))
            page.click("#submit")
            error = "notes.txt could not be read as an image or DICOM file"
            sync_api.expect(page.locator("#error")).to_contain_text(error, timeout=30_000)
            assert page.locator("#results").is_hidden()
            page.screenshot(path=str(ARTIFACTS / "app_error.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "app_result.png").stat().st_size > 10_000
