"""The reward server and the `remote` client on loopback: the same scores as the local reward, and the
failure policies (drop / stop) on a killed server, a slow server, a malformed answer, a NaN score; retries
with exponential backoff; and the client never unpickles."""

import json
import logging
import pickle
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from visalign.rewards import load_reward
from visalign.rewards.server import RemoteReward, RemoteRewardError, decode_images, encode_images, make_server

IMAGES = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
PROMPTS = ["a cat", "a dog", "a fox"]


def _start(server):
    threading.Thread(target=server.serve_forever, daemon=True).start()
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
        url, calls, srv = _fake(lambda k: (200, ctype, payload))
        with pytest.raises(RemoteRewardError):
            RemoteReward(url, retries=0, on_failure="stop")(IMAGES, PROMPTS)
        srv.shutdown()
        srv.server_close()
    url, calls, srv = _fake(lambda k: _ok())
    assert RemoteReward(url, retries=0)(IMAGES, PROMPTS).scores.tolist() == [0.5] * 3
    srv.shutdown()
    srv.server_close()


def test_server_refuses_bad_requests_with_json_errors():
    import urllib.error
    import urllib.request

    srv = make_server(load_reward("compressibility"))
    url = _start(srv)
    try:
        for body in (b"[]", b'{"images": ["!!notbase64"]}', json.dumps({"images": encode_images(IMAGES),
                                                                          "prompts": ["x"]}).encode()):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(urllib.request.Request(url + "/score", data=body, method="POST"), timeout=5)
            assert e.value.code == 400 and json.loads(e.value.read())["error"].startswith("bad request")
        info = json.loads(urllib.request.urlopen(url + "/info", timeout=5).read())
        assert info == {"name": "compressibility", "needs_text": False, "differentiable": False,
                        "value_range": [float("-inf"), 0.0]}
    finally:
        srv.shutdown()
        srv.server_close()


def test_remote_options_are_checked():
    with pytest.raises(ValueError, match="needs reward_options.url"):
        load_reward("remote")
    with pytest.raises(ValueError, match="on_failure='retry'"):
        load_reward("remote", url="http://127.0.0.1:1", on_failure="retry")
    with pytest.raises(ValueError, match="http://"):
        load_reward("remote", url="127.0.0.1:1")
