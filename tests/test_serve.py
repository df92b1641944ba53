"""The HTTP service: every route and every bad input against a real uvicorn on a free port."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import pickle
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import assert_one_line_error, require, run_cli

require("fastapi")  # the 'serve' extra
httpx = require("httpx")  # the 'test' extra
import uvicorn  # noqa: E402

from lenet.bench.serve_load import ServerProcess, canvas_png, make_bodies, run_benchmark  # noqa: E402
from lenet.data import load_split  # noqa: E402
from lenet.predictor import Predictor  # noqa: E402
from lenet.server import create_app  # noqa: E402

MAX = 5_000_000


def png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    """Encode a PIL image."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def drawn_one(size: int = 200) -> bytes:
    """A "1" as a person draws it on the page: one dark vertical stroke on white."""
    img = Image.new("L", (size, size), 255)
    ImageDraw.Draw(img).line([(size // 2, size // 6), (size // 2, 5 * size // 6)], fill=0, width=16)
    return png(img)


def photo_of(digit28: np.ndarray, rng: np.random.Generator) -> bytes:
    """An MNIST digit as a phone photo of paper: dark ink, light uneven paper, noise, off-centre, JPEG."""
    h, w = 300, 400
    ink = (
        np.asarray(
            Image.fromarray(np.asarray(digit28, np.uint8)).resize((160, 160), Image.BILINEAR),
            np.float32,
        )
        / 255.0
    )
    paper = np.linspace(235, 185, w, dtype=np.float32)[None, :].repeat(h, 0)  # lighting gradient
    y0, x0 = int(rng.integers(20, 120)), int(rng.integers(20, 220))
    page = paper.copy()
    page[y0 : y0 + 160, x0 : x0 + 160] *= 1 - 0.85 * ink
    page += rng.normal(0, 4, page.shape)
    rgb = np.stack([page, page * 0.98, page * 0.95], -1).clip(0, 255).astype(np.uint8)
    return png(Image.fromarray(rgb, "RGB"), "JPEG", quality=80)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """The bundled weights, loaded once, as ``lenet serve`` does by default."""
    return Predictor()


@pytest.fixture(scope="module")
def server(predictor):
    """A real uvicorn serving :func:`create_app` on a free loopback port, in a thread."""
    app = create_app(predictor, max_bytes=MAX)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False)
    srv = uvicorn.Server(config)
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert t.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    t.join(10)


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        yield c


def post_raw(client, data: bytes, ctype: str = "image/png", **params):
    return client.post("/api/predict", content=data, headers={"Content-Type": ctype}, params=params)


def assert_json_error(r, status: int, *needles: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    msg = r.json()["error"]
    assert isinstance(msg, str) and msg and "\n" not in msg and "Traceback" not in msg
    for n in needles:
        assert n in msg.lower(), msg
    return msg


# --- routes ---------------------------------------------------------------------------------


def test_page_and_static_files(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert '<canvas id="pad"' in html and 'id="upload"' in html and 'id="bars"' in html
    assert "/static/app.js" in html and "/static/style.css" in html
    assert "http://" not in html and "https://" not in html  # nothing from a CDN
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for f, ctype in (("app.js", "javascript"), ("style.css", "text/css")):
        s = client.get(f"/static/{f}")
        assert s.status_code == 200 and ctype in s.headers["content-type"]
        assert "http://" not in s.text and "https://" not in s.text
    assert client.get("/static/nope.js").status_code == 404


def test_health(client, predictor):
    r = client.get("/api/health")
    assert r.status_code == 200
    j = r.json()
    assert j["status"] == "ok" and j["model"] == predictor.name and j["uptime_s"] >= 0


def test_model_info(client, predictor):
    j = client.get("/api/model").json()
    assert j["name"] == predictor.name
    info = predictor.info
    for key in ("parameters", "test_accuracy"):
        assert key in j and j[key] == info[key]
    sha = [v for k, v in j.items() if "sha256" in k]
    assert sha and len(sha[0]) == 64
    assert j["max_bytes"] == MAX
    assert "/" not in str(j.get("path", ""))  # only the file name, not the server's layout


def test_openapi_docs(client):
    spec = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/health", "/api/model"} <= set(spec["paths"])
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "image/*" in body
    assert client.get("/docs").status_code == 200


def check_answer(j: dict, predictor, top_k: int = 3) -> None:
    assert set(j) >= {
        "digit",
        "confidence",
        "probabilities",
        "top_k",
        "preprocessed_png_base64",
        "model",
        "elapsed_ms",
    }
    assert j["model"] == predictor.name and j["elapsed_ms"] >= 0
    assert len(j["probabilities"]) == 10 and abs(sum(j["probabilities"]) - 1) < 1e-4
    assert j["confidence"] == pytest.approx(max(j["probabilities"]))
    assert j["digit"] == int(np.argmax(j["probabilities"]))
    assert len(j["top_k"]) == top_k and j["top_k"][0] == [j["digit"], j["confidence"]]
    seen = Image.open(io.BytesIO(base64.b64decode(j["preprocessed_png_base64"])))
    assert seen.size == (28, 28) and seen.mode == "L"


def test_predict_raw_body(client, predictor):
    r = post_raw(client, drawn_one())
    assert r.status_code == 200, r.text
    j = r.json()
    check_answer(j, predictor)
    assert j["digit"] == 1


def test_predict_multipart(client, predictor):
    r = client.post("/api/predict", files={"file": ("one.png", drawn_one(), "image/png")})
    assert r.status_code == 200, r.text
    check_answer(r.json(), predictor)
    assert r.json()["digit"] == 1


def test_predict_query_options(client, predictor):
    j = post_raw(client, drawn_one(), top_k=5).json()
    check_answer(j, predictor, top_k=5)
    j = post_raw(client, drawn_one(), min_confidence=1.0).json()
    assert j["digit"] is None and j["reason"] == "unsure"
    assert_json_error(post_raw(client, drawn_one(), top_k=0), 422, "top_k")
    assert_json_error(post_raw(client, drawn_one(), top_k=11), 422, "top_k")
    assert_json_error(post_raw(client, drawn_one(), min_confidence=2), 422, "min_confidence")


def test_predict_same_answer_as_predictor(client, predictor, mnist_dir):
    """The service and the Python API share one pipeline: same digit, same probabilities."""
    split = load_split("test", mnist_dir)
    for i in range(5):
        body = canvas_png(split.images[i])
        j = post_raw(client, body).json()
        p = predictor.predict_one(body)
        assert j["digit"] == p.digit
        np.testing.assert_allclose(j["probabilities"], p.probabilities, atol=1e-6)


def test_predict_photos_of_digits(client, mnist_dir):
    """Phone-photo-like JPEGs of MNIST test digits (dark ink, uneven paper, off-centre) come back right."""
    split = load_split("test", mnist_dir)
    rng = np.random.default_rng(0)
    n = 50
    correct = 0
    for i in range(n):
        r = client.post(
            "/api/predict",
            files={"file": (f"{i}.jpg", photo_of(split.images[i], rng), "image/jpeg")},
        )
        assert r.status_code == 200, r.text
        correct += r.json()["digit"] == int(split.labels[i])
    assert correct / n >= 0.94, f"{correct}/{n} photos right"


def test_blank_canvas_is_200_with_reason(client):
    for blank in (Image.new("L", (280, 280), 255), Image.new("RGBA", (280, 280), (0, 0, 0, 0))):
        r = post_raw(client, png(blank))
        assert r.status_code == 200, r.text
        j = r.json()
        assert j["digit"] is None and j["reason"] == "no digit found"


# --- bad input ------------------------------------------------------------------------------


def test_not_an_image(client):
    assert_json_error(post_raw(client, b"hello, I am text"), 400)
    # A pickle is just bytes that are not an image: nothing a client sends is unpickled.
    assert_json_error(post_raw(client, pickle.dumps({"x": 1}), "application/octet-stream"), 400)


def test_empty_bodies(client):
    assert_json_error(post_raw(client, b""), 400, "empty")
    r = client.post("/api/predict", files={"file": ("empty.png", b"", "image/png")})
    assert_json_error(r, 400, "empty")


def test_truncated_png(client):
    data = drawn_one()
    assert_json_error(post_raw(client, data[: len(data) // 2]), 400)


def test_decompression_bomb(client):
    """A tiny PNG that declares 20000x20000 pixels is refused, not decoded."""
    bomb = png(Image.new("1", (20000, 20000), 0), optimize=True)
    assert len(bomb) < MAX
    assert_json_error(post_raw(client, bomb), 400)


def test_wrong_content_type(client):
    r = client.post("/api/predict", json={"image": "aGVsbG8="})
    assert_json_error(r, 415, "multipart/form-data", "image/*")
    r = client.post("/api/predict", content=drawn_one())  # no Content-Type at all
    assert_json_error(r, 415)


def test_bad_multipart(client):
    r = client.post("/api/predict", files={"picture": ("one.png", drawn_one(), "image/png")})
    assert_json_error(r, 400, "'file'")
    r = client.post("/api/predict", data={"file": "not a file"})
    assert_json_error(r, 415)  # urlencoded form
    r = client.post(
        "/api/predict", content=b"garbage", headers={"Content-Type": "multipart/form-data"}
    )
    assert_json_error(r, 400, "multipart")


def test_oversized_body_by_content_length(client):
    r = post_raw(client, b"\0" * (MAX + 1))
    assert_json_error(r, 413, "limit")
    # Exactly at the limit is read (and then refused as not an image, not as too big).
    assert_json_error(post_raw(client, b"\0" * MAX), 400)


def test_oversized_declared_length_refused_before_body_is_sent(server):
    """Only the headers are sent, announcing 100 MB: the 413 comes back without the body."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /api/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\n"
            b"Content-Length: 100000000\r\n\r\n"
        )
        reply = b""
        while chunk := s.recv(65536):  # the server answers and closes the connection
            reply += chunk
    head, _, body = reply.decode("latin-1").partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413"), reply
    assert "limit" in json.loads(body)["error"]


def test_streamed_body_is_counted_and_cut_off(predictor):
    """A chunked body with no Content-Length: reading stops at the chunk that crosses the limit."""
    app = create_app(predictor, max_bytes=100_000)
    consumed = 0

    async def receive():  # an endless 64 KB-per-message upload
        nonlocal consumed
        consumed += 1
        return {"type": "http.request", "body": b"\0" * 65536, "more_body": True}

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/predict",
        "raw_path": b"/api/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"localhost"),
            (b"content-type", b"image/png"),
            (b"transfer-encoding", b"chunked"),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert consumed == 2  # 64 KB, then 128 KB > 100 KB: stop
    assert "limit" in json.loads(sent[1]["body"])["error"]


def test_wrong_method_and_path(client):
    assert_json_error(client.get("/api/predict"), 405)
    assert_json_error(client.post("/api/health"), 405)
    assert_json_error(client.get("/api/nope"), 404)


def test_server_survives_bad_input(client):
    """After all of the above (same server, module scope), it still answers correctly."""
    for bad in (b"", b"x" * 1000, drawn_one()[:100]):
        post_raw(client, bad)
    assert client.get("/api/health").json()["status"] == "ok"
    assert post_raw(client, drawn_one()).json()["digit"] == 1


# --- the real command -------------------------------------------------------------------------


def test_serve_bad_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert_one_line_error(run_cli("serve", "--model", str(bad), "--port", "0"), "bad.pt")
    assert_one_line_error(run_cli("serve", "--model", str(tmp_path / "missing.pt")), "missing.pt")


def test_serve_bad_flags():
    for args in (["--port", "70000"], ["--workers", "0"], ["--max-bytes", "-1"]):
        p = run_cli("serve", *args)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr


@pytest.mark.slow
def test_lenet_serve_process(tmp_path):
    """``lenet serve``: binds 127.0.0.1 by default, honours --max-bytes, one log line per request."""
    with ServerProcess("--max-bytes", "1000") as srv:
        assert srv.url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            assert c.get("/api/health").status_code == 200
            assert c.get("/api/model").json()["max_bytes"] == 1000
            small = png(Image.new("L", (28, 28), 0))
            assert len(small) < 1000
            assert post_raw(c, small).json()["reason"] == "no digit found"
            assert post_raw(c, b"\0" * 1001).status_code == 413
    logged = [ln for ln in srv.lines if " /api/" in ln]
    # One line per request: ours, plus the readiness probe's GET /api/health.
    assert sum("GET /api/health 200" in ln for ln in logged) == 2, srv.lines
    assert sum("GET /api/model 200" in ln for ln in logged) == 1, srv.lines
    assert sum("POST /api/predict" in ln for ln in logged) == 2, srv.lines
    assert any("POST /api/predict 413" in ln for ln in logged)
    assert any("POST /api/predict 200" in ln and "no digit found" in ln for ln in logged)
    assert srv.proc.returncode == 0  # Ctrl-C shuts it down cleanly


@pytest.mark.slow
def test_lenet_serve_workers_and_load(mnist_dir):
    """Two worker processes hold a burst of concurrent requests with zero errors (no timing asserts)."""
    with ServerProcess("--workers", "2") as srv:
        result = run_benchmark(srv.url, make_bodies(50, mnist_dir), requests=300, concurrency=16)
    assert result.errors == 0, result.first_errors
    assert result.statuses == {"200": 300}
    assert result.accuracy >= 0.95
