"""The reward server and the `remote` client on loopback: the same scores as the local reward, and the
failure policies (drop / stop) on a killed server, a slow server, a malformed answer, a NaN score; retries
with exponential backoff; and the client never unpickles."""

import base64
import contextlib
import http.client
import io
import json
import logging
import math
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch
from PIL import Image

from visalign.rewards import load_reward
from visalign.rewards.base import Reward
from visalign.rewards.server import (
    PNG_SIGNATURE,
    TOKEN_ENV,
    Limits,
    RemoteReward,
    RemoteRewardError,
    RewardServer,
    decode_images,
    encode_images,
    make_server,
    serve,
)
from visalign.types import RewardOutput

IMAGES = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
PROMPTS = ["a cat", "a dog", "a fox"]


def _start(server):
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()  # shutdown() waits one poll
    return f"http://127.0.0.1:{server.server_address[1]}"


def _fake(answer):
    """A server whose every POST gets answer(count) -> (code, content type, body bytes); returns (url, calls, srv)."""
    calls = []

    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            calls.append(1)
            code, ctype, body = answer(len(calls))
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), H)
    return _start(srv), calls, srv


def _ok(n=3):
    return 200, "application/json", json.dumps({"scores": [0.5] * n}).encode()


@pytest.fixture
def sleeps(monkeypatch):
    """Record the client's backoff waits instead of sleeping."""
    waits = []
    monkeypatch.setattr("visalign.rewards.server._sleep", waits.append)
    return waits


def test_png_round_trip_is_the_8_bit_image():
    back = decode_images(encode_images(IMAGES))
    assert back.shape == IMAGES.shape and float((back - IMAGES).abs().max()) <= 1 / 127.5 + 1e-6


def test_served_reward_gives_the_local_scores():
    local = load_reward("compressibility", quality=90)
    srv = make_server(local)
    url = _start(srv)
    try:
        remote = load_reward("remote", url=url, retries=0)
        out = remote(IMAGES, PROMPTS, {"group_ids": torch.tensor([0, 0, 1])})
        ref = local(IMAGES, PROMPTS)
        torch.testing.assert_close(out.scores, ref.scores)
        torch.testing.assert_close(out.details["jpeg_kb"], ref.details["jpeg_kb"])
    finally:
        srv.shutdown()
        srv.server_close()


def test_killed_server_process_drop_then_stop(caplog, sleeps):
    """`visalign serve-reward` in its own process, used, then killed: drop -> NaN batch and one warning line
    after the bounded retries (waits 0.1, 0.2: exponential); stop -> one-line error."""
    proc = subprocess.Popen([sys.executable, "-m", "visalign.cli", "serve-reward", "compressibility", "--port", "0",
                             "--option", "quality=90"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = line.split(" on ")[1].split()[0]
        client = RemoteReward(url, timeout=5, retries=2, backoff=0.1, on_failure="drop")
        assert torch.isfinite(client(IMAGES, PROMPTS).scores).all()
    finally:
        proc.kill()
        proc.wait()
    with caplog.at_level(logging.WARNING, logger="visalign.rewards.remote"):
        out = client(IMAGES, PROMPTS)
    assert torch.isnan(out.scores).all() and out.scores.shape == (3,)
    assert sleeps == [0.1, 0.2]
    assert len(caplog.records) == 1 and "batch dropped" in caplog.records[0].getMessage()
    assert "3 attempts" in caplog.records[0].getMessage() and "\n" not in caplog.records[0].getMessage()
    client.on_failure = "stop"
    with pytest.raises(RemoteRewardError, match="on_failure=stop") as e:
        client(IMAGES, PROMPTS)
    assert "\n" not in str(e.value)


def test_slow_server_times_out_and_is_retried(caplog, sleeps):
    import time as _time

    url, calls, srv = _fake(lambda k: (_time.sleep(1.0), _ok())[1])
    client = RemoteReward(url, timeout=0.2, retries=1, backoff=0.05, on_failure="drop")
    with caplog.at_level(logging.WARNING, logger="visalign.rewards.remote"):
        out = client(IMAGES, PROMPTS)
    assert torch.isnan(out.scores).all() and len(caplog.records) == 1
    assert "timed out" in caplog.records[0].getMessage() and sleeps == [0.05]
    _time.sleep(1.2)  # let the handler threads finish before counting
    assert len(calls) == 2
    srv.server_close()


@pytest.mark.parametrize("answer, reason", [
    (lambda k: (200, "application/json", b"{not json"), "Expecting property name"),
    (lambda k: (200, "application/json", b'{"scores": [1.0, 2.0]}'), "list of 3 numbers"),
    (lambda k: (200, "application/json", b'{"scores": [1.0, "x", 2.0]}'), "non-numbers"),
    (lambda k: (200, "application/json", b'{"scores": [1.0, NaN, 2.0]}'), "non-finite scores"),
    (lambda k: (400, "application/json", b'{"error": "bad request: no images"}'), "HTTP 400"),
    (lambda k: (413, "application/json", b'{"error": "images: 9000x9000 pixels"}'), "HTTP 413: images: 9000"),
    (lambda k: (422, "application/json", b'{"error": "prompts: outside"}'), "HTTP 422: prompts: outside"),
    (lambda k: (401, "application/json", b'{"error": "Authorization: no token"}'), "HTTP 401"),
])
def test_unusable_answers_follow_the_policy_without_retry(answer, reason, caplog, sleeps):
    url, calls, srv = _fake(answer)
    with caplog.at_level(logging.WARNING, logger="visalign.rewards.remote"):
        out = RemoteReward(url, retries=3, backoff=0.01, on_failure="drop")(IMAGES, PROMPTS)
    assert torch.isnan(out.scores).all() and len(caplog.records) == 1 and reason in caplog.records[0].getMessage()
    assert len(calls) == 1 and sleeps == []  # a bad answer is not asked again
    with pytest.raises(RemoteRewardError, match=reason):
        RemoteReward(url, retries=3, on_failure="stop")(IMAGES, PROMPTS)
    srv.shutdown()
    srv.server_close()


def test_server_error_is_retried_then_succeeds(sleeps):
    url, calls, srv = _fake(lambda k: (503, "application/json", b"{}") if k == 1 else _ok())
    out = RemoteReward(url, retries=2, backoff=0.5)(IMAGES, PROMPTS)
    assert out.scores.tolist() == [0.5] * 3 and len(calls) == 2 and sleeps == [0.5]
    srv.shutdown()
    srv.server_close()


def test_client_never_unpickles(monkeypatch, caplog, sleeps):
    """A server answering with a pickle (as research reward servers do) is refused, and the client runs
    through good and bad answers with every unpickling entry point patched to fail the test."""
    def forbidden(*a, **k):
        raise AssertionError("the remote reward client unpickled something")

    for name in ("loads", "load", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    payload = pickle.dumps({"scores": [1.0, 2.0, 3.0]})
    for ctype in ("application/octet-stream", "application/json"):
        url, _, srv = _fake(lambda k, ctype=ctype: (200, ctype, payload))
        with pytest.raises(RemoteRewardError):
            RemoteReward(url, retries=0, on_failure="stop")(IMAGES, PROMPTS)
        srv.shutdown()
        srv.server_close()
    url, _, srv = _fake(lambda k: _ok())
    assert RemoteReward(url, retries=0)(IMAGES, PROMPTS).scores.tolist() == [0.5] * 3
    srv.shutdown()
    srv.server_close()


def test_remote_options_are_checked():
    with pytest.raises(ValueError, match="needs reward_options.url"):
        load_reward("remote")
    with pytest.raises(ValueError, match="on_failure='retry'"):
        load_reward("remote", url="http://127.0.0.1:1", on_failure="retry")
    with pytest.raises(ValueError, match="http://"):
        load_reward("remote", url="127.0.0.1:1")


# ------------------------------------------------------------------------- the server's hard edges (issue #34)

def _png(w, h, data_rows=b""):
    """A PNG whose header says w x h, with whatever (possibly far too little) pixel data: enough to test
    refusals made from the header alone."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(data_rows)) + chunk(b"IEND", b"")


def _b64(data):
    return base64.b64encode(data).decode()


@contextlib.contextmanager
def _served(reward="compressibility", **kw):
    """A RewardServer on a free loopback port; yields (url, port, server)."""
    srv = make_server(load_reward(reward) if isinstance(reward, str) else reward, **kw)
    url = _start(srv)
    try:
        yield url, srv.server_address[1], srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def server():
    with _served() as s:
        yield s


def _call(url, path="/score", body=None, method=None, headers=None, timeout=5):
    """(HTTP code, decoded JSON answer) of one request; the answer must be strict JSON."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            code, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        code, raw = e.code, e.read()
    return code, json.loads(raw, parse_constant=_no_constant)


def _no_constant(name):
    raise AssertionError(f"the server sent {name}, which is not JSON")


def _raw(port, data, timeout=5):
    """Send raw bytes, read until the server closes: (HTTP code, decoded JSON answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body, parse_constant=_no_constant)


GOOD = encode_images(IMAGES)
JPEG = io.BytesIO()
Image.new("RGB", (16, 16)).save(JPEG, format="JPEG")


@pytest.mark.parametrize("body, code, field", [
    ([], 400, "body"),
    ({}, 400, "images"),
    ({"images": "abc"}, 400, "images"),
    ({"images": []}, 400, "images"),
    ({"images": [5]}, 400, "images[0]"),
    ({"images": GOOD[:1] + ["!!notbase64"]}, 400, "images[1]"),
    ({"images": [_b64(JPEG.getvalue())]}, 415, "images[0]"),
    ({"images": [_b64(base64.b64decode(GOOD[0])[:60])]}, 400, "images[0]"),
    ({"images": [GOOD[0], encode_images(torch.zeros(1, 3, 8, 8))[0]]}, 400, "images"),
    ({"images": GOOD, "prompts": ["x"]}, 400, "prompts"),
    ({"images": GOOD, "prompts": "abc"}, 400, "prompts"),
    ({"images": GOOD, "prompts": [1, 2, 3]}, 400, "prompts"),
    ({"images": GOOD, "metadata": [1]}, 400, "metadata"),
    (b'{"images": NaN}', 400, "body"),
    (b"{not json", 400, "body"),
])
def test_client_errors_are_4xx_naming_the_field(server, body, code, field):
    got, ans = _call(server[0], body=body)
    assert (got, ans["field"]) == (code, field) and ans["error"].startswith(f"{field}: ") and "accepted" in ans["error"]


@pytest.mark.parametrize("request_bytes, code, field", [
    (b"GET /nowhere HTTP/1.0\r\n\r\n", 404, "path"),
    (b"PUT /score HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}", 405, "request"),
    (b"POST /score HTTP/1.0\r\n\r\n", 411, "Content-Length"),
    (b"POST /score HTTP/1.0\r\nContent-Length: 1000000000000\r\n\r\n", 413, "body"),  # refused before reading
    (b"POST /score HTTP/1.0\r\nContent-Length: x\r\n\r\n", 400, "Content-Length"),
    (b"POST /score HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "Content-Length"),
    (b"POST /score HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "Transfer-Encoding"),
    (b"POST /score HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "Transfer-Encoding"),
])
def test_protocol_errors_are_4xx_json(server, request_bytes, code, field):
    got, ans = _raw(server[1], request_bytes)
    assert (got, ans["field"]) == (code, field)


def test_prompt_outside_the_world_is_422_and_not_retried(sleeps, caplog):
    """geneval_s refuses a prompt outside its grammar: 422 naming prompts, and the client gives up at once."""
    with _served("geneval_s") as (url, _, _srv):
        code, ans = _call(url, body={"images": GOOD, "prompts": ["a red circle", "three stars", "a unicorn"]})
        assert code == 422 and ans["field"] == "prompts" and "unicorn" in ans["error"]
        code, ans = _call(url, body={"images": GOOD})
        assert code == 400 and ans["field"] == "prompts" and "missing" in ans["error"]
        with caplog.at_level(logging.WARNING, logger="visalign.rewards.remote"):
            out = RemoteReward(url, retries=3, on_failure="drop")(IMAGES, ["a unicorn"] * 3)
    assert torch.isnan(out.scores).all() and sleeps == [] and "HTTP 422: prompts" in caplog.records[0].getMessage()


def test_pixel_bomb_refused_from_its_header_without_decoding(server, monkeypatch):
    def no_decoding(*a, **k):
        raise AssertionError("the server decoded an image it should have refused from its header")

    monkeypatch.setattr("visalign.rewards.server.Image.open", no_decoding)
    code, ans = _call(server[0], body={"images": [_b64(_png(9000, 9000))]})
    assert (code, ans["field"]) == (413, "images[0]") and "9000x9000" in ans["error"] and "--max-pixels" in ans["error"]
    code, ans = _call(server[0], body={"images": [_b64(_png(4096, 4096))] * 3})  # each allowed, together too many
    assert (code, ans["field"]) == (413, "images") and "--max-request-pixels" in ans["error"]


def test_pillow_decompression_bomb_is_413():
    """Limits above Pillow's own: its DecompressionBombError is still an answer, not a silent drop."""
    limits = Limits(max_pixels=10**10, max_request_pixels=10**10)
    with _served(limits=limits) as (url, _, _srv):
        code, ans = _call(url, body={"images": [_b64(_png(20000, 20000))]})
    assert (code, ans["field"]) == (413, "images[0]") and "Pillow" in ans["error"]


def test_chunked_body_is_accepted_and_capped():
    body = json.dumps({"images": GOOD, "prompts": PROMPTS}).encode()
    with _served(limits=Limits(max_request_bytes=len(body) + 10)) as (_, port, _srv):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("POST", "/score", body=(body[i:i + 1000] for i in range(0, len(body), 1000)),
                     encode_chunked=True, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        ans = json.loads(resp.read())
        assert resp.status == 200
        ref = load_reward("compressibility")(IMAGES, PROMPTS).scores
        torch.testing.assert_close(torch.tensor(ans["scores"]), ref)
        big = json.dumps({"images": GOOD * 2}).encode()
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(big[i:i + 500]), big[i:i + 500]) for i in range(0, len(big), 500))
        code, ans = _raw(port, b"POST /score HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n")
        assert (code, ans["field"]) == (413, "body")


def test_info_is_strict_json_and_the_client_reads_it(server):
    code, info = _call(server[0], "/info")  # _call parses with every NaN/Infinity refused
    assert code == 200 and info == {"name": "compressibility", "needs_text": False, "differentiable": False,
                                    "value_range": [None, 0.0]}
    assert RemoteReward(server[0]).info()["value_range"] == (float("-inf"), 0.0)


class _Scripted(Reward):
    """A reward that counts its calls and returns NaN scores or raises, as asked."""

    name, needs_text = "scripted", False

    def __init__(self, behaviour):
        self.behaviour, self.calls = behaviour, 0

    def __call__(self, images, prompts, metadata=None):
        self.calls += 1
        if self.behaviour == "raise":
            raise RuntimeError("the model fell over")
        return RewardOutput(torch.tensor([1.0, math.nan, math.inf][: len(images)]), {})


def test_non_finite_scores_travel_as_null(caplog, sleeps):
    with _served(_Scripted("nan")) as (url, _, _srv):
        code, ans = _call(url, body={"images": GOOD})
        assert code == 200 and ans["scores"] == [1.0, None, None]
        with caplog.at_level(logging.WARNING, logger="visalign.rewards.remote"):
            out = RemoteReward(url, on_failure="drop")(IMAGES, PROMPTS)
    assert torch.isnan(out.scores).all() and "non-finite scores" in caplog.records[0].getMessage() and sleeps == []


def test_reward_failure_is_500_logged_and_retried(caplog, sleeps):
    reward = _Scripted("raise")
    with _served(reward) as (url, _, _srv):
        with caplog.at_level(logging.ERROR, logger="visalign.rewards.server"):
            code, ans = _call(url, body={"images": GOOD})
        assert code == 500 and "the model fell over" in ans["error"]
        assert any("failed" in r.getMessage() and r.exc_info for r in caplog.records)
        with pytest.raises(RemoteRewardError, match="HTTP 500"):
            RemoteReward(url, retries=2, backoff=0.01)(IMAGES, PROMPTS)
    assert reward.calls == 1 + 3 and sleeps == [0.01, 0.02]


def test_idle_connection_does_not_block_others():
    """A client that connects and sends nothing (and one that stops mid-headers) holds one thread, not the
    server: /info answers at once, and the idle one is dropped after the read timeout."""
    with _served(limits=Limits(read_timeout=1.0, deadline=3.0)) as (url, port, _srv):
        idle = socket.create_connection(("127.0.0.1", port))
        half = socket.create_connection(("127.0.0.1", port))
        half.sendall(b"POST /score HTTP/1.1\r\nContent-")
        start = time.monotonic()
        code, _ = _call(url, "/info", timeout=2)
        assert code == 200 and time.monotonic() - start < 2
        idle.settimeout(5)
        assert idle.recv(100) == b"" and time.monotonic() - start < 3  # closed by the server, no answer owed
        idle.close()
        half.close()


def test_slowloris_is_dropped_at_its_deadline():
    """A byte every 0.2 s never trips the 1 s read timeout; the 1.5 s deadline drops it all the same."""
    with _served(limits=Limits(read_timeout=1.0, deadline=1.5)) as (url, port, _srv):
        sock = socket.create_connection(("127.0.0.1", port))
        start, closed_after = time.monotonic(), None
        try:
            for byte in b"POST /score HTTP/1.1\r\nX-Padding: " + b"a" * 100:
                sock.sendall(bytes([byte]))
                time.sleep(0.2)
                assert _call(url, "/info", timeout=2)[0] == 200 if byte == ord("X") else True
        except OSError:  # reset or broken pipe: the server closed it
            closed_after = time.monotonic() - start
        sock.close()
    assert closed_after is not None and 1.4 < closed_after < 3.0


def test_slow_body_gets_408():
    with _served(limits=Limits(read_timeout=1.0, deadline=1.0)) as (_, port, _srv), \
            socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /score HTTP/1.0\r\nContent-Length: 100\r\n\r\n{")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.0 408") and b'"field": "request"' in answer


def test_fifty_parallel_clients_are_all_answered():
    with _served() as (url, _, _srv):
        client, barrier, results = RemoteReward(url, retries=0), threading.Barrier(50), []

        def one():
            barrier.wait()
            try:
                results.append(bool(torch.isfinite(client(IMAGES, PROMPTS).scores).all()))
            except Exception as e:  # noqa: BLE001 -- a reset or refusal: counted as a failure below
                results.append(repr(e))

        threads = [threading.Thread(target=one) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert results == [True] * 50


def test_connections_over_the_limit_get_503():
    with _served(limits=Limits(max_connections=2, read_timeout=2.0)) as (url, port, _srv):
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        time.sleep(0.2)
        code, ans = _raw(port, b"GET /info HTTP/1.0\r\n\r\n")
        assert code == 503 and ans["field"] == "server"
        for s in held:
            s.close()
        time.sleep(0.3)
        assert _call(url, "/info")[0] == 200


def test_token_authentication(monkeypatch, sleeps):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with _served(token="s3cret") as (url, _, _srv):
        assert _call(url, "/info") == (401, {"error": _call(url, "/info")[1]["error"], "field": "Authorization"})
        assert _call(url, "/info", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert _call(url, "/info", headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert _call(url, body={"images": GOOD}, headers={"Authorization": "Bearer x"})[0] == 401
        with pytest.raises(RemoteRewardError, match="HTTP 401: Authorization: no token"):
            RemoteReward(url, retries=3)(IMAGES, PROMPTS)
        assert sleeps == []  # a refused token is not asked again
        assert torch.isfinite(load_reward("remote", url=url, token="s3cret")(IMAGES, PROMPTS).scores).all()
        monkeypatch.setenv(TOKEN_ENV, "s3cret")
        assert torch.isfinite(RemoteReward(url)(IMAGES, PROMPTS).scores).all()


def test_serve_warns_without_a_token_on_every_interface(monkeypatch, capsys):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.setattr(RewardServer, "serve_forever", lambda self: None)  # start, print, return
    serve("compressibility", 0, host="0.0.0.0")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warning: listening on 0.0.0.0" in err[0] and "--token" in err[0]
    serve("compressibility", 0, host="0.0.0.0", token="s3cret")
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    serve("compressibility", 0, host="0.0.0.0")
    serve("compressibility", 0, host="127.0.0.1", token="")
    assert capsys.readouterr().err == ""


def test_cli_port_taken_or_out_of_range_is_one_line_exit_2(capsys):
    from visalign.cli import main

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        for port, why in ((taken.getsockname()[1], "Address already in use"), (70000, "out of range")):
            assert main(["serve-reward", "compressibility", "--port", str(port)]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and why in err and err.startswith("visalign serve-reward: error:")
    finally:
        taken.close()


def test_body_over_the_cap_is_413_for_the_client_not_a_reset(sleeps, caplog):
    """Refused from its Content-Length, the body still sent is swallowed so the client reads the 413 (a
    reset would look like a transport failure and be retried)."""
    with _served(limits=Limits(max_request_bytes=20_000)) as (url, _, _srv):
        big = torch.rand(8, 3, 64, 64) * 2 - 1  # about 100 kB of base64 PNG
        with caplog.at_level(logging.WARNING, logger="visalign.rewards.remote"):
            out = RemoteReward(url, retries=3, on_failure="drop")(big, [""] * 8)
    assert torch.isnan(out.scores).all() and sleeps == [] and "HTTP 413: body" in caplog.records[0].getMessage()


def test_memory_budget_full_is_503_and_limits_are_checked():
    with _served(limits=Limits(max_request_bytes=1000, max_buffered_bytes=1500, read_timeout=0.3)) as (_, port, srv):
        assert srv.budget.take(1000, 0)  # another request holds most of the budget
        code, ans = _raw(port, b"POST /score HTTP/1.0\r\nContent-Length: 900\r\n\r\n" + b" " * 900)
        assert (code, ans["field"]) == (503, "body") and "busy" in ans["error"]
        srv.budget.give(1000)
        code, ans = _raw(port, b"POST /score HTTP/1.0\r\nContent-Length: 900\r\n\r\n" + b" " * 900)
        assert (code, ans["field"]) == (400, "body")  # read this time: blank is not JSON
    with pytest.raises(ValueError, match="max_buffered_bytes=10 is below"):
        Limits(max_request_bytes=100, max_buffered_bytes=10)
    with pytest.raises(ValueError, match="deadline=0"):
        Limits(deadline=0)
