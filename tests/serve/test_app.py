"""The web app and HTTP API on a real server (free localhost port): urllib for the API, Chromium for the page."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import uvicorn
from omegaconf import OmegaConf
from PIL import Image

import lungnet.serve.app as app_module
from lungnet.artifacts.decision import new_record
from lungnet.artifacts.paths import decision_path
from lungnet.commands import app as app_cmd
from lungnet.data.preprocessing import logits_to_probs
from lungnet.errors import ConfigError
from lungnet.schema import AppConfig
from lungnet.scoring.ood import OodGate
from lungnet.serve.app import NOTICE, create_app, safe_name
from lungnet.serve.inference import Predictor
from tests.conftest import ROOT, run_cli, shared
from tests.data.test_bad_inputs import short_stream_png
from tests.serve.test_inference import LABELS, make_checkpoint, overflowing_checkpoint

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
APP_DEFAULTS = OmegaConf.to_container(OmegaConf.structured(AppConfig), enum_to_str=True)  # lungnet-app's


def service_options(**changes) -> dict:
    """`lungnet.serve.app.Service`'s options with the app's defaults (`lungnet.schema.AppConfig`; heatmaps: gradcam)."""
    return {"explain": "gradcam", **{k: APP_DEFAULTS[k] for k in ("alpha", "overlay_max_side", "max_queue")}, **changes}


def app_options(**changes) -> dict:
    """`lungnet.serve.app.create_app`'s options with the app's defaults."""
    return {"max_upload_mb": APP_DEFAULTS["max_upload_mb"], **service_options(**changes)}


LIMIT_MB = 8.0  # the uncompressed DICOM (7.2 MB) fits, 9 MB does not
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fit_decision(ckpt: Path, per_class: int = 30) -> Path:
    """A decision file for ``ckpt`` fitted on real DarkCovidNet X-rays (conformal scores, OOD gate, summary)."""
    pred = Predictor(ckpt, decision="none")
    files, classes = [], []
    for j, lab in enumerate(LABELS):
        found = sorted((shared("darkcovidnet") / lab).glob("*.jpg"))[:per_class]
        files += found
        classes += [j] * len(found)
    y = np.array(classes)
    logits, features = pred.outputs(torch.stack([pred.load(f)[1] for f in files]))
    record = new_record(LABELS, False, ckpt)
    record.split, record.temperature, record.alpha = "val", 1.0, 0.1
    record.conformal_scores = 1 - logits_to_probs(logits, False)[np.arange(len(y)), y]
    record.ood = OodGate.fit(features[::2], y[::2], dims=16).calibrate(features[1::2])
    ci = {"value": 0.5, "lo": 0.4, "hi": 0.6}
    record.summary = {"data_name": "darkcovidnet", "split": "val", "n": len(y), "accuracy": ci, "auroc_macro": ci}
    return record.write(decision_path(ckpt))


def photo(tmp_path: Path) -> Path:
    """skimage's astronaut: a natural photograph."""
    data = pytest.importorskip("skimage.data")
    path = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt = make_checkpoint(tmp_path_factory.mktemp("app") / "best.ckpt", size=32)
    fit_decision(ckpt)
    app = create_app(Predictor(ckpt), **app_options(max_upload_mb=LIMIT_MB))
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
    assert "decision" in body and body["thresholds"] is None  # three classes, no positive class: the arg-max
    assert body["notice"] == NOTICE and "heatmap_png_base64" not in body


def test_api_returns_the_decision_set_and_ood_flag(server, tmp_path):
    status, body = post(f"{server}/predict", "chest.jpg", xray().read_bytes())
    assert status == 200 and body["decision_split"] == "val" and body["decision_file"] == "best.decision.json"
    assert body["decision"] in [*LABELS, "abstain"] and set(body["prediction_set"]) <= set(LABELS)
    assert body["ood"] is False and body["ood_score"] > 0 and body["calibrated"] is True
    status, body = post(f"{server}/predict", "astronaut.png", photo(tmp_path).read_bytes())
    assert status == 200 and body["ood"] is True and body["decision"] == "abstain"
    assert body["decision_reason"].startswith("unlike the training images")
    with urllib.request.urlopen(f"{server}/model", timeout=30) as resp:
        info = json.loads(resp.read())
    assert info["summary"]["data_name"] == "darkcovidnet" and info["decision"]["split"] == "val"
    assert info["summary_missing"] is None
    with urllib.request.urlopen(f"{server}/docs", timeout=30) as resp:
        page = resp.read().decode()
    assert "swagger-ui" in page.lower() and "cdn" not in page.lower()  # OpenAPI docs served locally
    with urllib.request.urlopen(f"{server}/openapi.json", timeout=30) as resp:
        assert "/predict" in json.loads(resp.read())["paths"]


def strings(value, key: str = ""):
    """Every string in a JSON answer, with its key (base64 images left out: they may hold any 4 characters)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from strings(v, str(k))
    elif isinstance(value, list):
        for v in value:
            yield from strings(v, key)
    elif isinstance(value, str) and not key.endswith("_base64"):
        yield key, value


def test_no_answer_holds_a_server_path(server):
    answers = {}
    for route in ("/health", "/model"):
        with urllib.request.urlopen(f"{server}{route}", timeout=30) as resp:
            answers[route] = json.loads(resp.read())
    answers["/predict"] = post(f"{server}/predict", "chest.jpg", xray().read_bytes())[1]
    tmp = tempfile.gettempdir()
    for route, body in answers.items():
        leaked = [(k, v) for k, v in strings(body) if tmp in v or v.startswith("/")]
        assert not leaked, f"{route} shows server paths: {leaked}"
        assert body["decision_file"] == "best.decision.json" and re.fullmatch("[0-9a-f]{64}", body["decision_sha256"])
    for route in ("/health", "/model"):
        facts = answers[route]
        assert facts["model_file"] == "best.ckpt" and re.fullmatch("[0-9a-f]{64}", facts["model_sha256"])


def test_the_model_card_is_read_beside_the_decision_file_in_use(tmp_path):
    ckpt = make_checkpoint(tmp_path / "models" / "best.ckpt", size=32)
    record = new_record(LABELS, False, ckpt)
    record.split = "val"
    kept = record.write(tmp_path / "kept" / "mine.decision.json")  # evaluate.py decision.out=<this file>
    (tmp_path / "kept" / "mine.model_card.md").write_text("# the card of this decision file\n")
    (tmp_path / "models" / "best.model_card.md").write_text("# the card beside the model\n")
    info = app_module.model_info(Predictor(ckpt, decision=str(kept)), {})
    assert info["model_card"] == "# the card of this decision file\n"
    assert app_module.model_info(Predictor(ckpt), {})["model_card"] == "# the card beside the model\n"


def test_a_model_without_a_validation_summary_names_the_command_that_writes_it(tmp_path, caplog):
    """A checkpoint from before training wrote its decision file (none, or training's OOD gate alone): the page
    and /model say which command fills the gap (base names only); the server's log gives the full path."""
    ckpt = make_checkpoint(tmp_path / "models" / "best.ckpt", size=32)
    info = app_module.model_info(Predictor(ckpt), {})
    assert info["summary"] == {} and info["summary_missing"].startswith("python evaluate.py ckpt=best.ckpt split=val")
    new_record(LABELS, False, ckpt).write(decision_path(ckpt))  # training's file before it held the summary
    with caplog.at_level(logging.WARNING, logger="lungnet.serve.app"):
        create_app(Predictor(ckpt), **app_options(explain=None))
    assert f"python evaluate.py ckpt={ckpt} split=val writes it" in caplog.text
    kept = new_record(LABELS, False, ckpt).write(tmp_path / "kept" / "mine.decision.json")
    info = app_module.model_info(Predictor(ckpt, decision=str(kept)), {})
    assert "ckpt=best.ckpt split=val decision.out=mine.decision.json" in info["summary_missing"]
    assert str(tmp_path) not in info["summary_missing"]


def test_api_heatmap_and_dicom(server):
    dcm = shared("dicom") / "RG1_UNCR.dcm"
    status, body = post(f"{server}/predict?heatmap=true", "../../etc/scan.dcm", dcm.read_bytes())
    assert status == 200, body
    assert body["file"] == "scan.dcm"  # the client's path is never used; only the base name is echoed
    assert body["heatmap_class"] in body["probabilities"]  # which class the heatmap explains
    caption = body["heatmap_caption"]  # the caption predict.py draws under its heatmap PNGs
    assert caption["lines"][0] == "scan.dcm" and f"Decision: {body['decision']}" in " ".join(caption["lines"])
    cls, p = body["heatmap_class"], body["probabilities"][body["heatmap_class"]]
    assert caption["lines"][-1].startswith(f"Heatmap: gradcam of {cls}, probability {p:.3f}")
    assert caption["mark"] == ("ood" if body["ood"] else "abstain" if body["decision"] == "abstain" else "")
    png = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png_base64"])))
    assert png.mode == "RGB" and max(png.size) == 1024  # 1955x1841 overlay, downscaled for transfer
    assert abs(png.size[0] / png.size[1] - 1841 / 1955) < 0.01
    arr = np.asarray(png).astype(int)
    assert (np.abs(arr[..., 0] - arr[..., 2]) > 40).mean() > 0.05  # coloured heat, not just the gray X-ray


def test_api_errors_are_json_with_status_codes(server, tmp_path):
    status, body = post(f"{server}/predict", "notes.txt", b"this is not an x-ray")
    assert status == 422 and "notes.txt could not be read as an image or DICOM file" in body["error"]
    status, body = post(f"{server}/predict", "empty.png", b"")
    assert status == 422 and "empty file" in body["error"]
    short = short_stream_png(tmp_path / "short.png").read_bytes()  # was 200, the missing rows black
    status, body = post(f"{server}/predict", "short.png", short)
    assert status == 422 and "short.png" in body["error"] and "pixel data end after 5 of 48 rows" in body["error"]
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
    run_cli(app_cmd.main, [f"ckpt={ckpt}", "port=8123", "max_upload_mb=3"], monkeypatch)
    assert seen["port"] == 8123 and seen["host"] == "127.0.0.1"
    assert {r.path for r in seen["app"].routes} >= {"/", "/predict", "/health"}
    with pytest.raises(SystemExit) as exc:
        run_cli(app_cmd.main, ["port=1", "bogus=2"], monkeypatch)
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
            sync_api.expect(page.locator("#model")).to_contain_text("trained on darkcovidnet", timeout=30_000)
            page.set_input_files("#file", str(xray()))
            page.click("#submit")
            page.wait_for_selector("#overlay[src^='data:image/png;base64,']", timeout=60_000)
            names = page.locator("#labels li .name").all_inner_texts()
            assert sorted(names) == sorted(LABELS)
            for img in ("#overlay", "#original"):
                assert page.locator(img).evaluate("img => img.complete && img.naturalWidth") > 0
            assert page.locator("#decision").inner_text().startswith("Decision: ")
            assert page.locator("#setline").is_visible() and page.locator("#scale").is_visible()
            assert page.locator("#ood").is_hidden()
            caption = page.locator("#heatcaption").inner_text()  # the caption predict.py draws under its PNGs
            assert caption.startswith(xray().name) and "Decision: " in caption and "Heatmap: gradcam of " in caption
            page.screenshot(path=str(ARTIFACTS / "app_result.png"), full_page=True)

            page.set_input_files("#file", str(photo(tmp_path)))
            page.click("#submit")
            sync_api.expect(page.locator("#ood")).to_contain_text("unlike the training images", timeout=60_000)
            assert page.locator("#decision").inner_text() == "Decision: abstain"
            sync_api.expect(page.locator("#heatcaption")).to_contain_text("OUT OF DISTRIBUTION", timeout=30_000)
            assert page.locator("#heatcaption").get_attribute("class") == "alert"
            page.screenshot(path=str(ARTIFACTS / "app_ood.png"), full_page=True)

            page.set_input_files("#file", str(text))
            page.click("#submit")
            error = "notes.txt could not be read as an image or DICOM file"
            sync_api.expect(page.locator("#error")).to_contain_text(error, timeout=30_000)
            assert page.locator("#results").is_hidden()
            page.screenshot(path=str(ARTIFACTS / "app_error.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "app_result.png").stat().st_size > 10_000


def test_a_client_gone_mid_upload_is_one_log_line(tmp_path, caplog):
    """Starlette raises ClientDisconnect inside the multipart parser: one warning, no ASGI traceback."""
    import asyncio

    app = create_app(Predictor(make_checkpoint(tmp_path / "m.ckpt", size=32)), **app_options())
    boundary = "b" * 16
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'.encode()
    messages = [{"type": "http.request", "body": head + b"\0" * 1000, "more_body": True}, {"type": "http.disconnect"}]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
            (b"content-length", b"100000"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    with caplog.at_level("INFO"):
        asyncio.run(app(scope, receive, send))  # before: ClientDisconnect escaped (a traceback per request)
    lines = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(lines) == 1 and "127.0.0.1:50000" in lines[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info]


def test_work_is_one_request_at_a_time_overlay_included(tmp_path):
    """Parallel heatmap requests never overlap: decoding, model, heatmap and overlay all run under one lock."""
    predictor = Predictor(make_checkpoint(tmp_path / "m.ckpt", size=32))
    service = app_module.Service(predictor, **service_options(overlay_max_side=64))
    active, peak, guard = [0], [0], threading.Lock()

    def tracked(fn):
        def run(*args, **kwargs):
            with guard:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            try:
                time.sleep(0.2)
                return fn(*args, **kwargs)
            finally:
                with guard:
                    active[0] -= 1

        return run

    predictor.overlay = tracked(predictor.overlay)
    original = predictor.predict_iter
    predictor.predict_iter = tracked(lambda *a, **k: list(original(*a, **k)))
    data = (shared("dicom") / "RG1_UNCR.dcm").read_bytes()  # 1955 x 1841 px
    results = []
    threads = [threading.Thread(target=lambda: results.append(service.classify(data, "x.dcm", True))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [status for status, _ in results] == [200, 200, 200]
    assert peak[0] == 1
    png = Image.open(io.BytesIO(base64.b64decode(results[0][1]["heatmap_png_base64"])))
    assert max(png.size) == 64


def test_start_warns_when_the_host_is_not_loopback(tmp_path, monkeypatch, caplog):
    ckpt = make_checkpoint(tmp_path / "m.ckpt", size=32)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    real, seen = app_module.warn_if_exposed, []
    monkeypatch.setattr(app_module, "warn_if_exposed", lambda host: seen.append(real(host)))
    run_cli(app_cmd.main, [f"ckpt={ckpt}", "host=0.0.0.0"], monkeypatch)
    assert seen == [True]  # the command checks the address it serves on
    for host, warned in (("127.0.0.1", False), ("localhost", False), ("::1", False), ("0.0.0.0", True)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lungnet"):
            assert real(host) == warned
        found = [r for r in caplog.records if r.levelname == "WARNING" and "no authentication" in r.getMessage()]
        assert bool(found) == warned, host
    assert app_module.is_loopback("127.0.0.2") and not app_module.is_loopback("example.org")


def test_serves_an_ensemble_naming_its_members(tmp_path):
    from fastapi.testclient import TestClient

    a = make_checkpoint(tmp_path / "a" / "a.ckpt", size=32)
    b = make_checkpoint(tmp_path / "b" / "b.ckpt", size=40, seed=1)
    client = TestClient(create_app(Predictor([str(a), str(b)]), **app_options()))
    info = client.get("/model").json()
    assert info["kind"] == "ensemble" and [m["name"] for m in info["members"]] == ["a", "b"]
    assert info["heatmaps"] is False and info["model_file"] is None
    assert [m["checkpoint"] for m in info["members"]] == ["a.ckpt", "b.ckpt"] and str(tmp_path) not in json.dumps(info)
    assert all(len(m["sha256"]) == 64 for m in info["members"])  # members pinned by hash, named without their folder
    files = {"file": ("chest.jpg", xray().read_bytes(), "image/jpeg")}
    body = client.post("/predict", files=files).json()
    assert body["members"] == ["a", "b"] and sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert client.post("/predict?heatmap=true", files=files).status_code == 501


def test_cli_serves_a_list_of_checkpoints(tmp_path, monkeypatch):
    a = make_checkpoint(tmp_path / "a" / "a.ckpt", size=32)
    b = make_checkpoint(tmp_path / "b" / "b.ckpt", size=32, seed=1)
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    run_cli(app_cmd.main, [f"ckpt=[{a},{b}]", "port=8124"], monkeypatch)
    assert seen["port"] == 8124 and {r.path for r in seen["app"].routes} >= {"/", "/predict", "/model"}


def test_requests_beyond_max_queue_get_503_until_one_finishes(tmp_path):
    """Each admitted request holds its upload in memory while it waits for the one model thread: the count is capped."""
    predictor = Predictor(make_checkpoint(tmp_path / "m.ckpt", size=32))
    entered, release = threading.Event(), threading.Event()
    original = predictor.predict_iter

    def held(*args, **kwargs):
        entered.set()
        assert release.wait(60)
        return list(original(*args, **kwargs))

    predictor.predict_iter = held
    port = free_port()
    srv = uvicorn.Server(
        uvicorn.Config(create_app(predictor, **app_options(max_queue=1)), port=port, log_level="warning")
    )
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    url, data, first = f"http://127.0.0.1:{port}/predict", xray().read_bytes(), {}
    worker = threading.Thread(target=lambda: first.update(answer=post(url, "a.jpg", data)))
    worker.start()
    try:
        assert entered.wait(60)
        req = urllib.request.Request(url, data=b"x", method="POST", headers={"Content-Type": "multipart/form-data"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=30)
        assert refused.value.code == 503 and refused.value.headers["Retry-After"] == "5"
        assert "Busy: 1 requests" in json.loads(refused.value.read())["error"]
    finally:
        release.set()
        worker.join(60)
    assert first["answer"][0] == 200
    assert post(url, "b.jpg", data)[0] == 200  # the place is free again
    srv.should_exit = True
    with pytest.raises(ConfigError, match="max_queue=0"):  # one line at start (a user error), not a traceback
        create_app(predictor, **app_options(max_queue=0))


def test_the_answer_reports_the_thresholds_of_the_decision_file(tmp_path):
    """``thresholds`` is what decides: the decision file's operating point; null for the arg-max (no positive class,
    or no decision file)."""
    from fastapi.testclient import TestClient

    ckpt = make_checkpoint(tmp_path / "best.ckpt", size=32)
    record = new_record(LABELS, False, ckpt)
    record.positive_class, record.thresholds = "Covid-19", {"Covid-19": 0.3, "Pneumonia": 0.6}
    written = json.loads(record.write(decision_path(ckpt)).read_text())["thresholds"]
    image = {"file": ("chest.jpg", xray().read_bytes(), "image/jpeg")}
    for decision, expected in (("auto", written), ("none", None)):
        body = (
            TestClient(create_app(Predictor(ckpt, decision=decision), **app_options()))
            .post("/predict", files=image)
            .json()
        )
        assert body["thresholds"] == expected, (decision, body)
    assert written == {"Covid-19": 0.3, "Pneumonia": 0.6}


def test_a_model_with_non_finite_output_answers_500_not_a_decision(tmp_path, caplog):
    from fastapi.testclient import TestClient

    client = TestClient(
        create_app(Predictor(overflowing_checkpoint(tmp_path / "m.ckpt"), decision="none"), **app_options())
    )
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)).save(png, format="PNG")
    response = client.post("/predict", files={"file": ("chest.png", png.getvalue(), "image/png")})
    assert response.status_code == 500 and "probabilities" not in response.json(), response.json()
    assert response.json()["error"].startswith("The model gave no finite output for this image")
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(logged) == 1 and "output is not finite" in logged[0] and "chest.png" in logged[0], logged
