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

from conftest import asgi_scope, assert_one_line_error, require, run_cli

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

    scope = asgi_scope(extra=[(b"transfer-encoding", b"chunked")])
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
    for args in (
        ["--port", "70000"],
        ["--workers", "0"],
        ["--max-bytes", "-1"],
        ["--max-pixels", "0"],
        ["--queue", "0"],
        ["--read-timeout", "0"],
        ["--read-timeout", "nan"],
        ["--limit-concurrency", "0"],
        ["--keep-alive", "-1"],
    ):
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


# --- bounds: queue, deadlines, connections, pixels (issue 12) ----------------------------------


class GatedPredictor:
    """The real predictor whose preprocessing waits for a gate (so requests pile up) and counts."""

    def __init__(self, predictor: Predictor):
        self._p = predictor
        self.gate = threading.Event()
        self.prepared = 0

    def __getattr__(self, name):
        return getattr(self._p, name)

    def prepare(self, source, max_pixels=None):
        assert self.gate.wait(30), "the test never opened the gate"
        self.prepared += 1
        return self._p.prepare(source, max_pixels)


class FakeClient:
    """One ASGI request: sends ``body`` (then, if ``hang``, never the rest), can disconnect."""

    def __init__(self, body: bytes, more_body: bool = False):
        self.body, self.more_body = body, more_body
        self.sent_body = False
        self.gone = asyncio.Event()
        self.messages: list[dict] = []

    async def receive(self) -> dict:
        if not self.sent_body:
            self.sent_body = True
            return {"type": "http.request", "body": self.body, "more_body": self.more_body}
        await self.gone.wait()  # a client that sends nothing more until it goes away
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int | None:
        return self.messages[0]["status"] if self.messages else None

    def headers(self) -> dict:
        return {k.decode(): v.decode() for k, v in self.messages[0]["headers"]}

    def json(self) -> dict:
        return json.loads(b"".join(m.get("body", b"") for m in self.messages[1:]))


def in_process(app, calls):
    """Run ``await calls(client)`` against the app in this process (httpx's ASGI transport)."""

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            out = await calls(c)
        app.state.batcher.close()
        return out

    return asyncio.run(go())


async def wait_until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def test_queue_bound_503_retry_after_and_gone_clients_dropped(predictor):
    """queue=2, batches of 1: one runs, two wait, the fourth gets 503 + Retry-After; a waiting
    request whose client disconnects is dropped, never preprocessed."""
    gated = GatedPredictor(predictor)
    app = create_app(gated, queue=2, max_batch=1)
    body = drawn_one()

    async def scenario():
        clients = [FakeClient(body) for _ in range(4)]
        tasks = [
            asyncio.create_task(app(asgi_scope(len(body)), clients[0].receive, clients[0].send))
        ]
        batcher = app.state.batcher
        await wait_until(lambda: batcher.running == 1)  # the first is computing (at the gate)
        for c in clients[1:3]:
            tasks.append(asyncio.create_task(app(asgi_scope(len(body)), c.receive, c.send)))
        await wait_until(lambda: batcher.waiting == 2)
        await app(asgi_scope(len(body)), clients[3].receive, clients[3].send)  # over the bound
        clients[1].gone.set()  # this client leaves while waiting
        await wait_until(lambda: tasks[1].done())
        gated.gate.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        batcher.close()
        return clients, batcher

    clients, batcher = asyncio.run(scenario())
    busy = clients[3]
    assert busy.status == 503 and busy.headers()["retry-after"] == "1"
    assert not busy.sent_body and busy.headers()["connection"] == "close"  # refused unread
    assert busy.headers()["content-type"] == "application/json"
    assert "server busy" in busy.json()["error"] and "try again" in busy.json()["error"]
    assert clients[0].status == 200 and clients[0].json()["digit"] == 1
    assert clients[2].status == 200 and clients[2].json()["digit"] == 1
    assert batcher.dropped == 1 and gated.prepared == 2  # the gone client's image never ran


def test_batcher_refuses_over_the_bound_after_the_body_too(predictor):
    """The queue can fill while a body is being read: the second check raises ServerBusy."""
    from lenet.batcher import Batcher, ServerBusy

    gated = GatedPredictor(predictor)
    batcher = Batcher(gated, queue=1, max_batch=1)

    async def scenario():
        first = asyncio.create_task(batcher.predict(drawn_one(), 3, None))
        await wait_until(lambda: batcher.running == 1)
        second = asyncio.create_task(batcher.predict(drawn_one(), 3, None))
        await wait_until(lambda: batcher.waiting == 1)
        with pytest.raises(ServerBusy):
            await batcher.predict(drawn_one(), 3, None)
        gated.gate.set()
        answers = await asyncio.wait_for(asyncio.gather(first, second), 30)
        batcher.close()
        return answers

    assert [p.digit for p in asyncio.run(scenario())] == [1, 1]


def test_batched_answers_match_one_by_one(predictor, mnist_dir):
    """Requests that share one network call get exactly the answer each gets alone."""
    split = load_split("test", mnist_dir)
    bodies = [canvas_png(split.images[i]) for i in range(12)]
    app = create_app(predictor, max_batch=16)

    async def burst():
        clients = [FakeClient(b) for b in bodies]
        await asyncio.gather(*(app(asgi_scope(len(c.body)), c.receive, c.send) for c in clients))
        app.state.batcher.close()
        return clients

    for c, b in zip(asyncio.run(burst()), bodies, strict=True):
        assert c.status == 200
        alone = predictor.predict_one(b)
        assert c.json()["digit"] == alone.digit
        np.testing.assert_allclose(c.json()["probabilities"], alone.probabilities, atol=1e-6)


def test_slow_body_gets_408_and_close(predictor):
    """Half a body and then nothing: 408 JSON after --read-timeout, and the connection closes."""
    app = create_app(predictor, read_timeout=0.2)
    body = drawn_one()
    client = FakeClient(body[:100], more_body=True)
    asyncio.run(asyncio.wait_for(app(asgi_scope(len(body)), client.receive, client.send), 10))
    assert client.status == 408 and client.headers()["connection"] == "close"
    msg = client.json()["error"]
    assert "not received within 0.2 s" in msg and "100 bytes" in msg


def test_service_pixel_cap(predictor):
    """The service's own pixel cap answers 400 'image too large' and shows in /api/model."""
    app = create_app(Predictor(max_pixels=10_000))

    async def calls(c):
        big = png(Image.new("L", (101, 100), 255))
        ctype = {"Content-Type": "image/png"}
        return (
            await c.get("/api/model"),
            await c.post("/api/predict", content=big, headers=ctype),
            await c.post("/api/predict", content=drawn_one(100), headers=ctype),
        )

    model, big, ok = in_process(app, calls)
    assert model.json()["max_pixels"] == 10_000
    assert_json_error(big, 400, "image too large", "10,000")
    assert ok.json()["digit"] == 1


def test_app_from_env_carries_every_setting(monkeypatch):
    """The --workers path (each process builds the app from the environment) keeps the flags."""
    from lenet.server import app_from_env

    for k, v in dict(
        LENET_SERVE_MAX_BYTES="1234",
        LENET_SERVE_TOP_K="5",
        LENET_SERVE_MIN_CONFIDENCE="0.5",
        LENET_SERVE_MAX_PIXELS="4321",
        LENET_SERVE_QUEUE="7",
        LENET_SERVE_READ_TIMEOUT="2.5",
    ).items():
        monkeypatch.setenv(k, v)
    app = app_from_env()

    async def model(c):
        return await c.get("/api/model")

    j = in_process(app, model).json()
    assert (j["max_bytes"], j["max_pixels"], j["queue"], j["read_timeout_s"]) == (
        1234,
        4321,
        7,
        2.5,
    )
    assert app.state.batcher.queue == 7


def test_serve_help_documents_every_flag():
    p = run_cli("serve", "--help")
    assert p.returncode == 0
    for flag in (
        "--workers",
        "--max-bytes",
        "--max-pixels",
        "--queue",
        "--read-timeout",
        "--limit-concurrency",
        "--keep-alive",
    ):
        assert flag in p.stdout, flag
    assert "number of cores" in p.stdout and "16000000" in p.stdout


@pytest.mark.slow
def test_slow_and_idle_connections_are_closed_and_limited():
    """A real ``lenet serve``: a connection that sends nothing is closed after --read-timeout,
    one that trickles half a head gets 408; connections over --limit-concurrency get a 503
    JSON at once; a normal request is still answered."""
    args = ("--workers", "1", "--read-timeout", "1", "--limit-concurrency", "3")
    with ServerProcess(*args) as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        addr = (host, int(port))
        idle = socket.create_connection(addr, timeout=10)
        slow = socket.create_connection(addr, timeout=10)
        slow.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        third = socket.create_connection(addr, timeout=10)
        time.sleep(0.3)  # the server has accepted all three
        over = socket.create_connection(addr, timeout=10)
        reply = read_all(over)
        assert reply.startswith(b"HTTP/1.1 503"), reply
        head, _, body = reply.partition(b"\r\n\r\n")
        assert (
            b"retry-after: 1" in head.lower()
            and "too many connections" in json.loads(body)["error"]
        )
        t0 = time.monotonic()
        assert read_all(idle) == b""  # closed without a word: it never started a request
        reply = read_all(slow)
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert "request head not received" in json.loads(reply.partition(b"\r\n\r\n")[2])["error"]
        assert time.monotonic() - t0 < 9  # closed by the 1 s deadline, not by the socket timeout
        for s in (idle, slow, third, over):
            s.close()
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            assert post_raw(c, drawn_one()).json()["digit"] == 1


def read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded by the socket timeout)."""
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def test_a_one_pixel_drawing_is_seen_at_mnist_width(client, mnist_dir):
    """A mouse or 1-px pen drawing posted like the drawing page's canvas: the 28x28 the
    network saw (and the page shows) has MNIST's stroke width, not a faint hairline."""
    import base64
    import io as _io

    from lenet.data import load_split
    from photos import hairline_png

    test = load_split("test", mnist_dir)
    right, ink = 0, []
    for i in range(20):
        digit, label = test.images[i].numpy(), int(test.labels[i])
        r = post_raw(client, hairline_png(digit, size=280))
        assert r.status_code == 200, r.text
        out = r.json()
        right += out["digit"] == label
        seen = np.asarray(Image.open(_io.BytesIO(base64.b64decode(out["preprocessed_png_base64"]))))
        ink.append(seen.astype(float).sum() / digit.astype(float).sum())
    assert right >= 19
    assert 0.6 < np.median(ink) < 1.6, np.median(ink)  # a hairline alone has a fraction of it
