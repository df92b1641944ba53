"""The service's guards: a request log no client can forge, and the Host allow-list."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from conftest import assert_one_line_error, require, run_cli

require("fastapi")  # the 'serve' extra
httpx = require("httpx")  # the 'test' extra

from lenet.bench.serve_load import ServerProcess  # noqa: E402
from lenet.httpguard import (  # noqa: E402
    LOOPBACK_HOSTS,
    HostAllowList,
    RequestLog,
    escape,
    escape_path,
    host_name,
    is_wildcard,
    parse_hosts,
    serve_hosts,
)
from lenet.predictor import Predictor  # noqa: E402
from lenet.server import create_app  # noqa: E402


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """The bundled weights, loaded once."""
    return Predictor()


def call(app, path: str = "/api/health", headers=(("host", "localhost"),), client=None):
    """One GET through an ASGI app, in process: (status, JSON body or None)."""
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "query_string": b"",
        "root_path": "",
        "headers": raw,
        "client": client or ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive():  # the (empty) body, then a client that stays connected
        if messages:
            return messages.pop()
        await asyncio.Event().wait()

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    ctype = dict(sent[0].get("headers", [])).get(b"content-type", b"")
    return sent[0]["status"], json.loads(body) if ctype.startswith(b"application/json") else None


async def hello(scope, receive, send):
    """The smallest ASGI app: 200, empty body."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


# --- escaping ---------------------------------------------------------------------------------


def test_escape_keeps_plain_text_and_escapes_the_rest():
    assert escape("GET") == "GET" and escape("127.0.0.1") == "127.0.0.1"
    assert escape("a\nb\rc\x00\x1b\x7f") == "a\\nb\\rc\\x00\\x1b\\x7f"
    assert escape("é\u2028") == "\\xe9\\u2028"  # non-ASCII, Unicode line separator
    assert escape("a b") == "a\\x20b" and escape("a b", spaces=True) == "a b"
    assert escape("\\n") == "\\\\n"  # a literal backslash-n is not mistaken for an escape


def test_escape_path_keeps_ordinary_paths_readable():
    for p in ("/", "/api/predict", "/static/app.js", "/a-b_c.d~e/f:g@h!$&'()*+,;="):
        assert escape_path(p) == p
    assert escape_path("/x\ny") == "/x%0Ay" and escape_path("/x\r\ny") == "/x%0D%0Ay"
    assert escape_path("/a b%c") == "/a%20b%25c" and escape_path("/é") == "/%C3%A9"


def forged_lines(records) -> list[str]:
    """The log messages that are not exactly one line of printable ASCII."""
    return [
        r.getMessage() for r in records if any(not (32 <= ord(c) < 127) for c in r.getMessage())
    ]


@pytest.mark.parametrize(
    "path",
    [
        "/api/health\nlenet: 6.6.6.6 GET /admin 200 0.1ms",  # %0A, decoded by the server
        "/api/health\r\nlenet: 6.6.6.6 GET /admin 200 0.1ms",
        "/api/health\u2028lenet: forged",  # %E2%80%A8: a line break to some log viewers
        "/api/health\x1b[2J\x1b[Hcleared",  # terminal escape sequences
        "/api/health\x85forged",  # NEL
    ],
)
def test_a_path_cannot_forge_a_log_line(caplog, path):
    app = RequestLog(hello)
    with caplog.at_level(logging.INFO, logger="lenet.server"):
        status, _ = call(app, path)
    records = [r for r in caplog.records if r.name == "lenet.server"]
    assert status == 200 and len(records) == 1
    assert forged_lines(records) == [], records[0].getMessage()
    assert "6.6.6.6 GET /admin 200" not in records[0].getMessage().split("/api/health")[0]


def test_ordinary_request_log_line_is_unchanged(caplog):
    with caplog.at_level(logging.INFO, logger="lenet.server"):
        call(RequestLog(hello), "/api/health")
    (msg,) = [r.getMessage() for r in caplog.records if r.name == "lenet.server"]
    assert msg.startswith("127.0.0.1 GET /api/health 200 ") and msg.endswith("ms")


def test_client_address_and_method_are_escaped(caplog):
    """uvicorn takes the client address from X-Forwarded-For (from a trusted proxy): escaped."""
    with caplog.at_level(logging.INFO, logger="lenet.server"):
        call(RequestLog(hello), "/", client=("1.2.3.4 GET /admin 200\u2028x", 0))
    (r,) = [r for r in caplog.records if r.name == "lenet.server"]
    assert forged_lines([r]) == [] and r.getMessage().startswith("1.2.3.4\\x20GET\\x20/admin")


def test_full_app_logs_escaped_paths(caplog, predictor):
    app = create_app(predictor)
    with caplog.at_level(logging.INFO, logger="lenet.server"):
        status, body = call(app, "/api/nope\nlenet: 127.0.0.1 GET /api/health 200 0.1ms")
    assert status == 404 and "error" in body
    lines = [r for r in caplog.records if r.name == "lenet.server"]
    assert len(lines) == 1 and forged_lines(lines) == []
    assert "/api/nope%0Alenet:%20127.0.0.1" in lines[0].getMessage()


# --- Host allow-list --------------------------------------------------------------------------


def test_host_name_drops_port_case_brackets_and_final_dot():
    assert host_name("LocalHost:8000") == "localhost"
    assert host_name("localhost.") == "localhost"
    assert host_name("127.0.0.1:80") == "127.0.0.1"
    assert host_name("[::1]:8000") == host_name("[::1]") == host_name("::1") == "::1"
    assert host_name("") == ""


def test_serve_hosts_and_wildcards():
    assert serve_hosts("127.0.0.1") == LOOPBACK_HOSTS
    assert serve_hosts("0.0.0.0") == serve_hosts("::") == LOOPBACK_HOSTS  # no wildcard name
    assert serve_hosts("192.168.1.5") == (*LOOPBACK_HOSTS, "192.168.1.5")
    assert serve_hosts("::", ["Box.lan", "*"]) == (*LOOPBACK_HOSTS, "box.lan", "*")
    assert is_wildcard("0.0.0.0") and is_wildcard("::") and is_wildcard("[::]")
    assert not is_wildcard("127.0.0.1") and not is_wildcard("box.lan")
    assert parse_hosts("a.lan, b.lan,*") == ["a.lan", "b.lan", "*"]
    with pytest.raises(ValueError):
        parse_hosts("a.lan,,b.lan")


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:8000", "LOCALHOST", "127.0.0.1:1", "[::1]:8000", "[::1]"]
)
def test_loopback_names_are_allowed(host):
    assert call(HostAllowList(hello), headers=[("host", host)])[0] == 200


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:8000",
        "127.0.0.1.evil.example",  # a name that starts like an allowed one
        "localhost.evil.example",
        "evil.example#localhost",
        "0.0.0.0",
        "[::2]:8000",
        "",
    ],
)
def test_other_names_are_refused_with_json(host):
    status, body = call(HostAllowList(hello), headers=[("host", host)])
    assert status == 400
    msg = body["error"]
    assert msg.startswith(f"host '{host}' is not allowed") and "--allowed-hosts" in msg, msg


def test_missing_or_repeated_host_is_refused():
    status, body = call(HostAllowList(hello), headers=[])
    assert status == 400 and "no host header" in body["error"].lower()
    status, body = call(HostAllowList(hello), headers=[("host", "localhost")] * 2)
    assert status == 400 and "more than one" in body["error"]


def test_refused_host_is_escaped_in_the_answer():
    status, body = call(HostAllowList(hello), headers=[("host", "evil\x01\xe9 x")])
    assert status == 400 and body["error"].startswith("host 'evil\\x01\\xe9\\x20x' is not")


def test_configured_names_and_star():
    guard = HostAllowList(hello, ["Box.lan", "192.168.1.5", "[fe80::1]"])
    assert call(guard, headers=[("host", "box.lan:8000")])[0] == 200
    assert call(guard, headers=[("host", "192.168.1.5")])[0] == 200
    assert call(guard, headers=[("host", "[FE80::1]:8000")])[0] == 200
    assert call(guard, headers=[("host", "localhost")])[0] == 400  # the list is the whole list
    anything = HostAllowList(hello, ["*"])
    assert call(anything, headers=[("host", "evil.example")])[0] == 200
    assert call(anything, headers=[])[0] == 200


def test_app_refuses_rebound_names_and_logs_them(predictor, caplog):
    app = create_app(predictor)
    assert call(app, "/", headers=[("host", "127.0.0.1:8000")])[0] == 200  # the drawing page
    assert call(app, "/api/health", headers=[("host", "[::1]:8000")])[0] == 200
    with caplog.at_level(logging.INFO, logger="lenet.server"):
        status, body = call(app, "/api/health", headers=[("host", "attacker.example")])
    assert status == 400 and "attacker.example" in body["error"]
    (line,) = [r.getMessage() for r in caplog.records if r.name == "lenet.server"]
    assert " GET /api/health 400 " in line and "refused" in line
    assert call(create_app(predictor, allowed_hosts=["*"]), headers=[("host", "x.y")])[0] == 200


def test_app_from_env_carries_the_allowed_names(monkeypatch):
    from lenet.server import app_from_env

    monkeypatch.setenv("LENET_SERVE_ALLOWED_HOSTS", "localhost,box.lan")
    app = app_from_env()
    assert call(app, headers=[("host", "box.lan:8000")])[0] == 200
    assert call(app, headers=[("host", "other.lan")])[0] == 400
    monkeypatch.delenv("LENET_SERVE_ALLOWED_HOSTS")
    assert call(app_from_env(), headers=[("host", "box.lan")])[0] == 400  # loopback only


def test_cli_flag_parses():
    from lenet.cli import build_parser

    args = build_parser(["serve"]).parse_args(["serve", "--allowed-hosts", "a.lan, b.lan"])
    assert args.allowed_hosts == ["a.lan", "b.lan"]
    assert build_parser(["serve"]).parse_args(["serve"]).allowed_hosts == []
    p = run_cli("serve", "--allowed-hosts", "a.lan,,b")
    assert p.returncode == 2 and "empty host name" in p.stderr and "Traceback" not in p.stderr


def test_cli_bad_flag_is_one_line():
    assert_one_line_error(run_cli("serve", "--allowed-hosts", ""), "allowed-hosts")


@pytest.mark.slow
def test_wildcard_bind_warns_and_refuses_other_names():
    """``--host 0.0.0.0``: one warning line; a LAN name is refused until --allowed-hosts names it."""
    with ServerProcess(host="0.0.0.0") as srv:
        assert srv.url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            assert c.get("/").status_code == 200
            r = c.get("/api/health", headers={"Host": "box.lan:8000"})
            assert r.status_code == 400 and "--allowed-hosts box.lan" in r.json()["error"]
    warned = [ln for ln in srv.lines if "--allowed-hosts" in ln]
    assert len(warned) == 1, srv.lines


@pytest.mark.slow
def test_allowed_hosts_reach_every_worker():
    """With --workers 2 the names travel to each process (LENET_SERVE_ALLOWED_HOSTS)."""
    with ServerProcess("--workers", "2", "--allowed-hosts", "box.lan", host="0.0.0.0") as srv:
        assert srv.url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            for _ in range(6):  # new connections, spread over the workers
                ok = c.get("/api/health", headers={"Host": "BOX.lan", "Connection": "close"})
                bad = c.get("/api/health", headers={"Host": "other.lan", "Connection": "close"})
                assert ok.status_code == 200 and bad.status_code == 400
    assert not [ln for ln in srv.lines if "pass --allowed-hosts" in ln]
