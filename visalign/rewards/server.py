"""A reward over HTTP: `visalign serve-reward NAME --port P` serves any registered reward, and the `remote`
reward calls it. JSON in both directions, images as base64 PNG bytes; no pickle anywhere (research code
often sends pickled tensors, which lets a server run code on the client and vice versa).

    POST /score  {"images": [base64 PNG, ...], "prompts": [...], "metadata": {...}}
              -> {"scores": [float, ...], "details": {name: [float, ...]}}
    GET  /info   -> {"name", "needs_text", "differentiable": false, "value_range": [low, high]}

Every answer is strict JSON (no NaN or Infinity): an infinite bound of `value_range` and a non-finite score
are sent as null (`[null, 0.0]` is (-inf, 0]); the client reads null back as -inf / +inf (value_range) or NaN
(scores, which its failure policy then handles). Errors are {"error": "FIELD: what was wrong; accepted: ...",
"field": FIELD} with a 4xx code for the client's mistakes (400 malformed, 401 token, 404 path, 405 method,
408 too slow, 411 no length, 413 too large, 415 not PNG, 422 a prompt the reward refuses) and 500 (logged)
for the server's own failures; 503 when the server is full.

The server (`RewardServer`) handles connections in threads, at most `Limits.max_connections` at once (more
are answered 503 at once), one request per connection. Reading a request has a timeout per read and a total
deadline, so an idle client or one sending a byte at a time is dropped, never holds a thread for long.
Request bodies (Content-Length or chunked) are capped each and in total in memory. Images must be PNG; their
size is read from the PNG header and checked against pixel budgets per image and per request BEFORE anything
is decoded (a 0.2 MB PNG can decode to gigabytes). Reading and JSON parsing run in every connection's thread;
base64 and PNG decoding run concurrently for at most `Limits.max_inflight` requests (each holds its decoded
batch); the reward itself scores one batch at a time under a lock: reward models are rarely thread-safe, and
it keeps the memory of scoring to one batch.
An optional shared token (`--token` or VISALIGN_REWARD_TOKEN) is checked on every request (401 without it).

The client has a timeout per request, bounded retries with exponential backoff on transport errors
(connection refused or reset, timeout, HTTP 5xx), and an explicit failure policy once they are spent, the
server refused the request (HTTP 4xx, never repeated) or the answer is unusable (not JSON, wrong length,
non-numeric or NaN scores): `stop` raises a one-line error; `drop` logs one warning line and returns NaN
scores, which the trainer treats as a skipped update."""

from __future__ import annotations

import base64
import binascii
import hmac
import http.client
import io
import ipaddress
import json
import logging
import math
import os
import socket
import struct
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer

import numpy as np
import torch
from PIL import Image

from ..images import images_to_tensor, tensor_to_images
from ..types import RewardOutput
from .base import REWARDS, Reward

log = logging.getLogger("visalign.rewards.remote")
server_log = logging.getLogger("visalign.rewards.server")
TOKEN_ENV = "VISALIGN_REWARD_TOKEN"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_REQUEST_BYTES = 128 * 2**20  # the default cap on one request body
POLICIES = ("drop", "stop")
PIECE = 2**20  # bodies are read (and counted against the memory budget) a MiB at a time
LINGER_S = 2.0  # after refusing an unread body: how long to swallow it so the client reads the refusal
_sleep = time.sleep  # the backoff wait (tests record it instead)


class RemoteRewardError(RuntimeError):
    """The remote reward failed under on_failure=stop (one line: what failed and where)."""


class Refusal(Exception):
    """A request the server answers with an error: HTTP `code`, the `field` at fault, a one-line message."""

    def __init__(self, code: int, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.code, self.field = code, field


@dataclass(frozen=True)
class Limits:
    """What one reward server accepts and holds at once (`visalign serve-reward --help` sets most of them)."""

    max_pixels: int = 4096 * 4096  # one image: width x height from its PNG header
    max_request_pixels: int = 2**25  # all images of one request (32 images of 1024 x 1024)
    max_images: int = 1024  # images in one request (many tiny PNGs cost per image, not per pixel)
    max_request_bytes: int = MAX_REQUEST_BYTES  # one body, after chunked decoding
    max_buffered_bytes: int = 512 * 2**20  # request bodies held in memory at once, all connections together
    max_connections: int = 128  # connections handled at once; more are answered 503 without a thread
    max_inflight: int = 2  # requests decoding or scoring at once (each holds one decoded batch)
    read_timeout: float = 10.0  # seconds one read from a client may wait
    deadline: float = 60.0  # seconds to receive a whole request (headers + body) from its connection
    backlog: int = 256  # the listen queue: bursts of connections wait in it instead of being reset

    def __post_init__(self):
        bad = [f"{f.name}={getattr(self, f.name)}" for f in fields(self) if not getattr(self, f.name) > 0]
        if bad:
            raise ValueError(f"reward server limits must be > 0, got {', '.join(bad)}")
        if self.max_buffered_bytes < self.max_request_bytes:  # else a body at the cap could never be read
            raise ValueError(f"reward server max_buffered_bytes={self.max_buffered_bytes} is below max_request_bytes="
                             f"{self.max_request_bytes}; accepted: at least one whole request")


# ------------------------------------------------------------------------------------------------ encoding

def encode_images(images: torch.Tensor) -> list[str]:
    """[B, 3, H, W] in [-1, 1] -> base64 PNGs (8 bits per channel: the server sees what a file would hold)."""
    out = []
    for img in tensor_to_images(images):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


def png_size(data: bytes, field: str) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, which the format puts first: known without decoding."""
    if not data.startswith(PNG_SIGNATURE):
        raise Refusal(415, field, f"not a PNG (starts with {data[:8]!r}); accepted: PNG images only")
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise Refusal(400, field, "PNG without an IHDR chunk after its signature; accepted: a complete PNG")
    width, height = struct.unpack(">II", data[16:24])
    if width == 0 or height == 0:
        raise Refusal(400, field, f"PNG of {width}x{height} pixels; accepted: at least 1x1")
    return width, height


def _b64(item, field: str) -> bytes:
    if not isinstance(item, str):
        raise Refusal(400, field, f"a {type(item).__name__}; accepted: a base64 string of PNG bytes")
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError) as e:
        raise Refusal(400, field, f"not base64 ({e}); accepted: standard base64 of PNG bytes") from None


def _check_pixels(sizes: list[tuple[int, int]], limits: Limits) -> None:
    """The pixel budgets, per image and per request, from the headers alone."""
    for i, (w, h) in enumerate(sizes):
        if w * h > limits.max_pixels:
            raise Refusal(413, f"images[{i}]", f"{w}x{h} = {w * h} pixels; accepted: at most {limits.max_pixels} "
                          "per image (serve-reward --max-pixels)")
    total = sum(w * h for w, h in sizes)
    if total > limits.max_request_pixels:
        raise Refusal(413, "images", f"{total} pixels in {len(sizes)} images; accepted: at most "
                      f"{limits.max_request_pixels} per request (serve-reward --max-request-pixels)")
    if len(set(sizes)) != 1:
        raise Refusal(400, "images", f"images of sizes {sorted(set(sizes))[:4]} (width, height); accepted: one size")


def _decode_png(data: bytes, out: np.ndarray, field: str) -> None:
    """Decode one PNG whose header was checked into `out` [H, W, 3] uint8; any decoding failure is the
    client's bytes (truncated, corrupt chunk, bad CRC...), so it is a 400 naming the image."""
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            out[...] = np.asarray(img.convert("RGB"))
    except Image.DecompressionBombError as e:  # only reachable when --max-pixels exceeds Pillow's own limit
        raise Refusal(413, field, f"{e}; accepted: at most {Image.MAX_IMAGE_PIXELS} pixels (Pillow's limit)") from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 -- whatever the decoder raises, the bytes were the client's
        raise Refusal(400, field, f"does not decode as PNG ({type(e).__name__}: {e}); accepted: a valid PNG") from None


def decode_images(items, limits: Limits | None = None) -> torch.Tensor:
    """base64 PNGs of one size -> [B, 3, H, W] in [-1, 1]; sizes checked from the headers before decoding."""
    limits = limits or Limits()
    if not isinstance(items, list) or not items:
        length = len(items) if isinstance(items, list) else "-"
        raise Refusal(400, "images", f"a {type(items).__name__} of length {length}; accepted: a non-empty list of "
                      "base64 PNG strings")
    if len(items) > limits.max_images:
        raise Refusal(413, "images", f"{len(items)} images; accepted: at most {limits.max_images} per request")
    blobs = [_b64(s, f"images[{i}]") for i, s in enumerate(items)]
    sizes = [png_size(b, f"images[{i}]") for i, b in enumerate(blobs)]
    _check_pixels(sizes, limits)
    w, h = sizes[0]
    out = np.empty((len(blobs), h, w, 3), dtype=np.uint8)  # one buffer: no list of arrays then a stacked copy
    for i, data in enumerate(blobs):
        _decode_png(data, out[i], f"images[{i}]")
    return images_to_tensor(out)


def _finite_or_none(values: list[float]) -> list[float | None]:
    """Strict JSON has no NaN/Infinity: a non-finite number travels as null."""
    return [v if math.isfinite(v) else None for v in values]


def _floats(values, what: str, n: int) -> list[float]:
    """n numbers from an answer; null (a non-finite number on the server) reads as NaN."""
    if not isinstance(values, list) or len(values) != n:
        raise ValueError(f"{what} must be a list of {n} numbers, got {type(values).__name__} of length "
                         f"{len(values) if isinstance(values, list) else '-'}")
    if not all(v is None or isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{what} holds non-numbers")
    return [math.nan if v is None else float(v) for v in values]


def _strict_constant(name: str):
    raise ValueError(f"{name} is not JSON; accepted: finite numbers (or null)")


# -------------------------------------------------------------------------------------------------- server

class _Budget:
    """A count of bytes that threads take and give back: the request bodies held in memory at once."""

    def __init__(self, total: int):
        self.free, self.cond = total, threading.Condition()

    def take(self, n: int, timeout: float) -> bool:
        with self.cond:
            if not self.cond.wait_for(lambda: self.free >= n, timeout):
                return False
            self.free -= n
            return True

    def give(self, n: int) -> None:
        with self.cond:
            self.free += n
            self.cond.notify_all()


class _DeadlineReader(io.RawIOBase):
    """A socket's reading side where every read waits at most `read_timeout` and none starts after `deadline`:
    a per-read timeout alone lets a client sending one byte per read hold the connection forever."""

    def __init__(self, sock: socket.socket, deadline: float, read_timeout: float):
        self.sock, self.deadline, self.read_timeout = sock, deadline, read_timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request was not received before its deadline")
        self.sock.settimeout(min(left, self.read_timeout))
        return self.sock.recv_into(buf)


class Handler(BaseHTTPRequestHandler):
    """One connection, one request (HTTP/1.0 semantics: the connection closes after the answer)."""

    server: RewardServer

    def setup(self):
        super().setup()
        self.rfile.close()  # the base class's plain socket file, replaced by one with a deadline
        limits = self.server.limits
        self.deadline = time.monotonic() + limits.deadline
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self.deadline, limits.read_timeout))
        self.reserved, self.body_read = 0, False

    # -------------------------------------------------------------------------------------------- answers
    def _send(self, code: int, payload: dict, headers: dict | None = None) -> None:
        body = json.dumps(payload, allow_nan=False).encode()
        self.connection.settimeout(self.server.limits.read_timeout)  # a client that does not read: bounded too
        self.send_response(code)
        for key, value in {"Content-Type": "application/json", "Content-Length": str(len(body)),
                           "Connection": "close", **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _refuse(self, e: Refusal) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if e.code == 401 else {"Retry-After": "1"} if e.code == 503 else {}
        self._send(e.code, {"error": str(e), "field": e.field}, headers)
        if self.command == "POST" and not self.body_read:
            self._linger()

    def _linger(self) -> None:
        """After refusing a request whose body was not read: swallow what the client still sends for a moment.
        Closing with unread data resets the connection, and the client would see a reset (and retry) instead
        of the refusal."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            end = time.monotonic() + LINGER_S
            while (left := end - time.monotonic()) > 0:
                self.connection.settimeout(left)
                if not self.connection.recv(65536):
                    break
        except OSError:
            pass

    def send_error(self, code, message=None, explain=None):
        """The base class's errors (bad request line, unknown method, huge headers) as JSON too."""
        if code == 501:  # an unknown method is the client's error, not the server's
            code, message = 405, f"method {self.command!r}; accepted: GET /info, POST /score"
        self._send(code, {"error": f"request: {message or self.responses.get(code, ('error',))[0]}",
                          "field": "request"}, {"Allow": "GET, POST"} if code == 405 else None)

    def _guard(self, fn) -> None:
        """Run one request: refusals become their 4xx/503, a slow client 408, anything else 500 and a log line."""
        try:
            self._authorize()
            fn()
        except Refusal as e:
            self._refuse(e)
        except TimeoutError:
            self._drop_slow()
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True  # the client left: nobody to answer
        except Exception as e:  # noqa: BLE001 -- the server's own failure: logged, answered 500, server up
            server_log.exception("reward server: %s %s failed", self.command, self.path)
            self._send(500, {"error": f"server: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                             "field": "server"})
        finally:
            self._release()

    def _drop_slow(self) -> None:
        limits = self.server.limits
        try:
            self._send(408, {"error": f"request: not received within {limits.deadline:g} s (or a read waited "
                                      f"over {limits.read_timeout:g} s); accepted: a request sent at once",
                             "field": "request"})
        except OSError:
            pass
        self.close_connection = True

    def _release(self) -> None:
        if self.reserved:
            self.server.budget.give(self.reserved)
            self.reserved = 0

    def _authorize(self) -> None:
        token = self.server.token
        if token is None:
            return
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode("utf-8", "replace"), f"Bearer {token}".encode()):
            raise Refusal(401, "Authorization", f"{'a wrong token' if given else 'no token'}; accepted: the header "
                          f"'Authorization: Bearer TOKEN' with the server's token ({TOKEN_ENV})")

    # ------------------------------------------------------------------------------------------- requests
    def do_GET(self):
        if self.path != "/info":
            return self._guard(self._unknown_path)
        self._guard(self._info)

    def do_POST(self):
        self._guard(self._score if self.path == "/score" else self._unknown_path)

    def _unknown_path(self):
        raise Refusal(404, "path", f"{self.command} {self.path!r}; accepted: GET /info, POST /score")

    def _info(self):
        reward = self.server.reward
        self._send(200, {"name": reward.name, "needs_text": reward.needs_text, "differentiable": False,
                         "value_range": _finite_or_none([float(v) for v in reward.value_range])})

    def _score(self):
        limits = self.server.limits
        req = self._parse(self._read_body())
        with self.server.inflight:  # bounds the decoded batches held at once
            images = decode_images(req.get("images"), limits)
            prompts, meta = self._prompts(req, len(images)), req.get("metadata") or {}
            if not isinstance(meta, dict):
                raise Refusal(400, "metadata", f"a {type(meta).__name__}; accepted: a JSON object")
            del req
            self._release()  # the body and its parsed copy are gone: other requests may read theirs
            scores, details = self._run_reward(images, prompts, meta)
        self._send(200, {"scores": scores, "details": details})

    def _run_reward(self, images: torch.Tensor, prompts: list[str], meta: dict):
        from ..prompts import PromptError

        reward = self.server.reward
        try:
            with self.server.score_lock, torch.no_grad():  # one batch at a time: reward models are not re-entrant
                out = reward(images.to(reward.device), prompts, meta)
        except PromptError as e:  # a prompt outside what the reward reads: the request's fault, not ours
            raise Refusal(422, "prompts", f"{str(e).splitlines()[0]}") from None
        n = len(images)
        if tuple(out.scores.shape) != (n,):
            raise RuntimeError(f"reward '{reward.name}' returned scores of shape {tuple(out.scores.shape)} for {n} "
                               "images")
        details = {k: _finite_or_none(v.float().tolist()) for k, v in out.details.items()
                   if isinstance(v, torch.Tensor) and v.shape == (n,)}
        return _finite_or_none(out.scores.float().tolist()), details

    def _prompts(self, req: dict, n: int) -> list[str]:
        prompts = req.get("prompts")
        if prompts is None:
            if self.server.reward.needs_text:
                raise Refusal(400, "prompts", f"missing; accepted: a list of {n} strings (reward "
                              f"'{self.server.reward.name}' reads the prompt)")
            return [""] * n
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise Refusal(400, "prompts", f"a {type(prompts).__name__} holding non-strings; accepted: a list of "
                          "strings")
        if len(prompts) != n:
            raise Refusal(400, "prompts", f"{len(prompts)} prompts for {n} images; accepted: one prompt per image")
        return prompts

    @staticmethod
    def _parse(body: bytearray) -> dict:
        try:
            req = json.loads(body, parse_constant=_strict_constant)
        except (ValueError, RecursionError) as e:
            raise Refusal(400, "body", f"not JSON ({str(e)[:200]}); accepted: a strict JSON object") from None
        if not isinstance(req, dict):
            raise Refusal(400, "body", f"a JSON {type(req).__name__}; accepted: a JSON object with images, prompts")
        if "images" not in req:
            raise Refusal(400, "images", "missing; accepted: a non-empty list of base64 PNG strings")
        return req

    # ----------------------------------------------------------------------------------------------- body
    def _read_body(self) -> bytearray:
        """The request body from Content-Length or chunked transfer coding, at most max_request_bytes."""
        te, length = self.headers.get("Transfer-Encoding"), self.headers.get("Content-Length")
        if te is not None and length is not None:  # ambiguous framing is how requests get smuggled
            raise Refusal(400, "Content-Length", "sent with Transfer-Encoding; accepted: one of the two")
        if te is not None:
            if te.strip().lower() != "chunked":
                raise Refusal(400, "Transfer-Encoding", f"{te!r}; accepted: chunked (or a Content-Length)")
            body = self._read_chunked()
        else:
            body = self._read_exactly(self._content_length(length))
        self.body_read = True
        if not body:
            raise Refusal(400, "body", "empty; accepted: a JSON object with images, prompts")
        return body

    def _content_length(self, value: str | None) -> int:
        cap = self.server.limits.max_request_bytes
        if value is None:
            raise Refusal(411, "Content-Length", "missing; accepted: a Content-Length or Transfer-Encoding: chunked")
        if not value.strip().isdigit():
            raise Refusal(400, "Content-Length", f"{value!r}; accepted: a number of bytes")
        n = int(value)
        if n > cap:
            raise Refusal(413, "body", f"{n} bytes; accepted: at most {cap} (serve-reward --max-request-mb)")
        return n

    def _read_exactly(self, n: int, into: bytearray | None = None) -> bytearray:
        """n bytes, a MiB at a time, each counted against the server's memory budget before it is read."""
        buf = bytearray() if into is None else into
        end = len(buf) + n
        while len(buf) < end:
            k = min(PIECE, end - len(buf))
            if not self.server.budget.take(k, self.server.limits.read_timeout):
                raise Refusal(503, "body", f"server busy: {self.server.limits.max_buffered_bytes} bytes of request "
                              "bodies already in memory; accepted: the same request again later")
            self.reserved += k
            piece = self.rfile.read(k)
            if not piece:
                raise Refusal(400, "body", f"ended after {len(buf)} of {end} bytes; accepted: the whole body")
            buf += piece
        return buf

    def _read_chunked(self) -> bytearray:
        """A chunked body (RFC 9112 7.1): hex size lines, data, CRLF; a zero size then trailers end it."""
        cap, body = self.server.limits.max_request_bytes, bytearray()
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise Refusal(400, "Transfer-Encoding", f"chunk size line {bytes(line[:40])!r}; accepted: hex digits "
                              "then CRLF") from None
            if size == 0:
                break
            if len(body) + size > cap:
                raise Refusal(413, "body", f"over {cap} bytes once dechunked; accepted: at most {cap} "
                              "(serve-reward --max-request-mb)")
            self._read_exactly(size, body)
            if self.rfile.read(2) != b"\r\n":
                raise Refusal(400, "Transfer-Encoding", "chunk data not followed by CRLF; accepted: RFC 9112 chunks")
        for _ in range(100):  # trailer fields, ignored, until the empty line
            if self.rfile.readline(8192).strip() == b"":
                return body
        raise Refusal(400, "Transfer-Encoding", "over 100 trailer lines; accepted: a few")

    def log_message(self, fmt, *args):  # one line per request at debug level, not stderr noise
        server_log.debug(fmt, *args)


class RewardServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer with the bounds of `Limits`: threads, body bytes, decoded batches, one scoring
    batch at a time, and an optional token."""

    daemon_threads = True
    block_on_close = False  # closing must not wait for a client that never sends anything

    def __init__(self, reward: Reward, host: str, port: int, limits: Limits | None = None, token: str | None = None):
        self.reward, self.limits, self.token = reward, limits or Limits(), token or None
        self.request_queue_size = self.limits.backlog  # read by listen() in server_activate
        self.slots = threading.BoundedSemaphore(self.limits.max_connections)
        self.inflight = threading.BoundedSemaphore(self.limits.max_inflight)
        self.score_lock = threading.Lock()
        self.budget = _Budget(self.limits.max_buffered_bytes)
        super().__init__((host, port), Handler)

    def server_bind(self):
        TCPServer.server_bind(self)  # HTTPServer's own also resolves getfqdn(host): a DNS wait for nothing
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            return self._busy(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def _busy(self, request: socket.socket) -> None:
        """All connection slots taken: a 503 written without a thread (the accept loop must not block)."""
        body = json.dumps({"error": f"server: busy with {self.limits.max_connections} connections; accepted: the "
                                    "same request again later", "field": "server"}).encode()
        head = (f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
                "\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
        try:
            request.setblocking(False)
            request.send(head + body)
            while request.recv(65536):  # what already arrived: closing over unread bytes would reset the answer
                pass
        except OSError:
            pass
        self.shutdown_request(request)

    def handle_error(self, request, client_address):
        """A connection that broke mid-answer: one debug line, not a traceback on stderr."""
        server_log.debug("reward server: connection from %s failed: %s", client_address, sys.exc_info()[1])


def make_server(reward: Reward, host: str = "127.0.0.1", port: int = 0, limits: Limits | None = None,
                token: str | None = None) -> RewardServer:
    """A RewardServer serving `reward` (port 0: a free port, read it from server.server_address)."""
    return RewardServer(reward, host, port, limits, token)


def is_loopback(host: str) -> bool:
    """Whether `host` only listens on this machine (a host name other than localhost counts as reachable)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, port: int, token: str | None) -> str | None:
    """The start-up warning for a server others can reach and use without a token, else None."""
    if token or is_loopback(host):
        return None
    return (f"visalign serve-reward: warning: listening on {host}:{port} without a token: anyone who reaches it can "
            f"use the reward; set --token or {TOKEN_ENV} (it travels in clear: use a trusted network or a TLS proxy)")


# -------------------------------------------------------------------------------------------------- client

class RemoteReward(Reward):
    """A reward computed by `visalign serve-reward` at `url` (not differentiable: images travel as PNG)."""

    name = "remote"
    differentiable = False

    def __init__(self, url: str, timeout: float = 60.0, retries: int = 3, backoff: float = 1.0,
                 on_failure: str = "stop", needs_text: bool = True, value_range=(-math.inf, math.inf),
                 token: str | None = None):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"remote reward url must start with http:// or https://, got '{url}'")
        if on_failure not in POLICIES:
            raise ValueError(f"remote reward on_failure='{on_failure}' is not one of {POLICIES}")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError(f"remote reward needs timeout > 0, retries >= 0, backoff >= 0; got {timeout}, {retries}, "
                             f"{backoff}")
        self.url, self.timeout, self.retries, self.backoff = url.rstrip("/"), timeout, retries, backoff
        self.on_failure, self.needs_text, self.value_range = on_failure, needs_text, tuple(value_range)
        self.token = token or os.environ.get(TOKEN_ENV) or None

    def _headers(self) -> dict:
        auth = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return {"Content-Type": "application/json", "Accept": "application/json", **auth}

    def _post(self, body: bytes | None, path: str = "/score") -> bytes:
        """One request (POST with a body, else GET); raises urllib/socket errors for the retry loop, ValueError
        for a refused answer."""
        req = urllib.request.Request(self.url + path, data=body, method="POST" if body is not None else "GET",
                                     headers=self._headers())
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            ctype = resp.headers.get("Content-Type", "")
            data = resp.read()
        if not ctype.startswith("application/json"):
            raise ValueError(f"answer has Content-Type '{ctype}', accepted: application/json only")
        return data

    def request(self, body: bytes | None, path: str = "/score") -> bytes:
        """A request with bounded retries: attempt k waits backoff * 2^k seconds after a transport failure or an
        HTTP 5xx; an HTTP 4xx is the request's fault and is never repeated."""
        for attempt in range(self.retries + 1):
            try:
                return self._post(body, path)
            except urllib.error.HTTPError as e:
                if e.code < 500 or attempt == self.retries:
                    raise ConnectionError(f"HTTP {e.code}: {_error_text(e)}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
                if attempt == self.retries:
                    reason = getattr(e, "reason", e)
                    raise ConnectionError(f"{type(reason).__name__}: {reason} after {self.retries + 1} "
                                          "attempts") from None
            _sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def info(self) -> dict:
        """The server's GET /info, value_range with its null bounds read back as -inf / +inf."""
        ans = json.loads(self.request(None, "/info"))
        low, high = ans.get("value_range") or (None, None)
        ans["value_range"] = (-math.inf if low is None else float(low), math.inf if high is None else float(high))
        return ans

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


def _error_text(e: urllib.error.HTTPError) -> str:
    """The server's one-line error message from a refusal (its JSON "error", else the raw start)."""
    raw = e.read()[:2000].decode(errors="replace")
    try:
        text = str(json.loads(raw).get("error", raw))
    except (ValueError, AttributeError):
        text = raw
    return (text.splitlines() or [""])[0][:300]


@REWARDS.register("remote", "a reward served by `visalign serve-reward` over HTTP (JSON + PNG); options: url, timeout, "
                  f"retries, backoff, on_failure drop|stop, token (else ${TOKEN_ENV})")
def _remote(url: str = "", timeout: float = 60.0, retries: int = 3, backoff: float = 1.0, on_failure: str = "stop",
            needs_text: bool = True, token: str = ""):
    if not url:
        raise ValueError("reward 'remote' needs reward_options.url, e.g. http://127.0.0.1:8000")
    return RemoteReward(url, timeout, retries, backoff, on_failure, needs_text, token=token or None)


def serve(name: str, port: int, options: dict | None = None, host: str = "127.0.0.1", device: str = "cpu",
          limits: Limits | None = None, token: str | None = None) -> None:
    """`visalign serve-reward`: load reward `name` and answer until interrupted. A port out of range or taken
    raises a one-line ValueError (the CLI prints it and exits 2)."""
    from .base import load_reward

    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port} is out of range; accepted: 0 to 65535 (0: a free port)")
    token = token or os.environ.get(TOKEN_ENV) or None
    reward = load_reward(name, **(options or {})).to(device)
    try:
        server = make_server(reward, host, port, limits, token)
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}; accepted: a free port on a local "
                         "address (--port 0 picks one)") from None
    port = server.server_address[1]
    warning = exposure_warning(host, port, token)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    print(f"serving reward '{name}' on http://{host}:{port} (POST /score, GET /info)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
