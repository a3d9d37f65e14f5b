"""A reward over HTTP: `visalign serve-reward NAME --port P` serves any registered reward, and the `remote`
reward calls it. JSON in both directions, images as base64 PNG bytes; no pickle anywhere (research code
often sends pickled tensors, which lets a server run code on the client and vice versa).

    POST /score  {"images": [base64 PNG, ...], "prompts": [...], "metadata": {...}}
              -> {"scores": [float, ...], "details": {name: [float, ...]}}
    GET  /info   -> {"name", "needs_text", "differentiable": false, "value_range"}

The client has a timeout per request, bounded retries with exponential backoff on transport errors
(connection refused or reset, timeout, HTTP 5xx), and an explicit failure policy once they are spent or the
answer is unusable (not JSON, wrong length, non-numeric or NaN scores): `stop` raises a one-line error;
`drop` logs one warning line and returns NaN scores, which the trainer treats as a skipped update."""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import torch
from PIL import Image

from ..images import images_to_tensor, tensor_to_images
from ..types import RewardOutput
from .base import REWARDS, Reward

log = logging.getLogger("visalign.rewards.remote")
MAX_REQUEST_BYTES = 512 * 2**20
POLICIES = ("drop", "stop")
_sleep = time.sleep  # the backoff wait (tests record it instead)


class RemoteRewardError(RuntimeError):
    """The remote reward failed under on_failure=stop (one line: what failed and where)."""


# ------------------------------------------------------------------------------------------------ encoding

def encode_images(images: torch.Tensor) -> list[str]:
    """[B, 3, H, W] in [-1, 1] -> base64 PNGs (8 bits per channel: the server sees what a file would hold)."""
    out = []
    for img in tensor_to_images(images):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


def decode_images(items: list[str]) -> torch.Tensor:
    """base64 PNGs of one size -> [B, 3, H, W] in [-1, 1]."""
    arrays = [np.asarray(Image.open(io.BytesIO(base64.b64decode(s, validate=True))).convert("RGB")) for s in items]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"images must share one size, got {sorted({a.shape for a in arrays})}")
    return images_to_tensor(np.stack(arrays))


def _floats(values, what: str, n: int) -> list[float]:
    if not isinstance(values, list) or len(values) != n:
        raise ValueError(f"{what} must be a list of {n} numbers, got {type(values).__name__} of length "
                         f"{len(values) if isinstance(values, list) else '-'}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{what} holds non-numbers")
    return [float(v) for v in values]


# -------------------------------------------------------------------------------------------------- server

def make_handler(reward: Reward, lock: threading.Lock):
    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path != "/info":
                return self._send(404, {"error": f"unknown path {self.path}; accepted: GET /info, POST /score"})
            self._send(200, {"name": reward.name, "needs_text": reward.needs_text, "differentiable": False,
                             "value_range": list(reward.value_range)})

        def do_POST(self):
            if self.path != "/score":
                return self._send(404, {"error": f"unknown path {self.path}; accepted: GET /info, POST /score"})
            n = int(self.headers.get("Content-Length") or 0)
            if not 0 < n <= MAX_REQUEST_BYTES:
                return self._send(413, {"error": f"request body of {n} bytes; accepted: 1 to {MAX_REQUEST_BYTES}"})
            try:
                req = json.loads(self.rfile.read(n))
                images = decode_images(req["images"])
                prompts = [str(p) for p in req.get("prompts") or [""] * len(images)]
                if len(prompts) != len(images):
                    raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
                meta = req.get("metadata") or {}
            except (ValueError, KeyError, TypeError, OSError) as e:
                return self._send(400, {"error": f"bad request: {e}"})
            try:
                with lock, torch.no_grad():  # one batch at a time: reward models are not re-entrant
                    out = reward(images.to(reward.device), prompts, meta)
            except Exception as e:  # the reward's own failure: an answer, not a dead server
                return self._send(500, {"error": f"{type(e).__name__}: {e}"})
            details = {k: v.float().tolist() for k, v in out.details.items()
                       if isinstance(v, torch.Tensor) and v.shape == (len(images),)}
            self._send(200, {"scores": out.scores.float().tolist(), "details": details})

        def log_message(self, fmt, *args):  # one line per request at debug level, not stderr noise
            logging.getLogger("visalign.rewards.server").debug(fmt, *args)

    return Handler


def make_server(reward: Reward, host: str = "127.0.0.1", port: int = 0) -> HTTPServer:
    """An HTTPServer serving `reward` (port 0: a free port, read it from server.server_address)."""
    return HTTPServer((host, port), make_handler(reward, threading.Lock()))


# -------------------------------------------------------------------------------------------------- client

class RemoteReward(Reward):
    """A reward computed by `visalign serve-reward` at `url` (not differentiable: images travel as PNG)."""

    name = "remote"
    differentiable = False

    def __init__(self, url: str, timeout: float = 60.0, retries: int = 3, backoff: float = 1.0,
                 on_failure: str = "stop", needs_text: bool = True, value_range=(-math.inf, math.inf)):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"remote reward url must start with http:// or https://, got '{url}'")
        if on_failure not in POLICIES:
            raise ValueError(f"remote reward on_failure='{on_failure}' is not one of {POLICIES}")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError(f"remote reward needs timeout > 0, retries >= 0, backoff >= 0; got {timeout}, {retries}, "
                             f"{backoff}")
        self.url, self.timeout, self.retries, self.backoff = url.rstrip("/"), timeout, retries, backoff
        self.on_failure, self.needs_text, self.value_range = on_failure, needs_text, tuple(value_range)

    def _post(self, body: bytes) -> bytes:
        """One POST /score; raises urllib/socket errors for the retry loop, ValueError for a refused answer."""
        req = urllib.request.Request(self.url + "/score", data=body, method="POST",
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            ctype = resp.headers.get("Content-Type", "")
            data = resp.read()
        if not ctype.startswith("application/json"):
            raise ValueError(f"answer has Content-Type '{ctype}', accepted: application/json only")
        return data

    def request(self, body: bytes) -> bytes:
        """POST with bounded retries: attempt k waits backoff * 2^k seconds after a transport failure."""
        for attempt in range(self.retries + 1):
            try:
                return self._post(body)
            except urllib.error.HTTPError as e:  # the server answered: 4xx is our fault, do not repeat it
                if e.code < 500 or attempt == self.retries:
                    raise ConnectionError(f"HTTP {e.code}: {e.read()[:200].decode(errors='replace')}") from None
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
                if attempt == self.retries:
                    reason = getattr(e, "reason", e)
                    raise ConnectionError(f"{type(reason).__name__}: {reason} after {self.retries + 1} attempts") from None
            _sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def __call__(self, images, prompts, metadata=None) -> RewardOutput:
        n = len(images)
        meta = {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in (metadata or {}).items()}
        body = json.dumps({"images": encode_images(images), "prompts": list(prompts), "metadata": meta}).encode()
        try:
            ans = json.loads(self.request(body))  # JSON only: the answer is data, never code
            if not isinstance(ans, dict):
                raise ValueError("answer is not a JSON object")
            scores = _floats(ans.get("scores"), "scores", n)
            if not all(math.isfinite(s) for s in scores):
                raise ValueError(f"non-finite scores {[s for s in scores if not math.isfinite(s)][:3]}")
            details = {k: torch.tensor(_floats(v, f"details[{k}]", n)) for k, v in (ans.get("details") or {}).items()}
        except (ConnectionError, ValueError, UnicodeDecodeError) as e:
            return self.fail(n, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return RewardOutput(torch.tensor(scores), details)

    def fail(self, n: int, reason: str) -> RewardOutput:
        msg = f"remote reward {self.url}: {reason}"
        if self.on_failure == "stop":
            raise RemoteRewardError(f"{msg} (on_failure=stop)")
        log.warning("%s; batch dropped (on_failure=drop)", msg)
        return RewardOutput(torch.full((n,), math.nan), {})


@REWARDS.register("remote", "a reward served by `visalign serve-reward` over HTTP (JSON + PNG); options: url, timeout, "
                  "retries, backoff, on_failure drop|stop")
def _remote(url: str = "", timeout: float = 60.0, retries: int = 3, backoff: float = 1.0, on_failure: str = "stop",
            needs_text: bool = True):
    if not url:
        raise ValueError("reward 'remote' needs reward_options.url, e.g. http://127.0.0.1:8000")
    return RemoteReward(url, timeout, retries, backoff, on_failure, needs_text)


def serve(name: str, port: int, options: dict | None = None, host: str = "127.0.0.1", device: str = "cpu") -> None:
    """`visalign serve-reward`: load reward `name` and answer until interrupted."""
    from .base import load_reward

    reward = load_reward(name, **(options or {})).to(device)
    server = make_server(reward, host, port)
    print(f"serving reward '{name}' on http://{host}:{server.server_address[1]} (POST /score, GET /info)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
