"""Load on `visalign serve-reward` over loopback: well-behaved clients alone, then the same clients while
attackers are connected (idle connections, slowloris sending a byte at a time, decompression bombs), in the
same run against one server process.

    python benchmarks/reward_server_load.py [--clients 50] [--requests 4] [--idle 10] [--slowloris 10]
        [--bombs 5] [--out docs/results/reward-server-load.md]

The server runs in a subprocess (`visalign serve-reward compressibility --timeout 2 --deadline 5`: a cheap
reward, so the numbers measure the server; short limits, so the attackers are dropped within the run). Each
well-behaved client is the `remote` reward (retries=0: every failure counts) scoring 4 random 64x64 images
per request. The bomb is a valid 0.24 MB PNG of 9000 x 9000 black pixels (243 MB decoded), posted in a loop.
Reported: requests served, failures, median and worst latency, how long the attackers were held, and the
server's peak resident memory (VmHWM from /proc/PID/status) after each phase. Bounded: a few thousand
requests, under a minute.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import platform
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import torch

from visalign.rewards.server import PNG_SIGNATURE, RemoteReward

SERVER_ARGS = ["serve-reward", "compressibility", "--port", "0", "--timeout", "2", "--deadline", "5"]


def bomb_png(side: int = 9000) -> bytes:
    """A valid PNG of side x side black RGB pixels: compresses about 1000:1, built row by row (no big array)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row = zlib.compressobj(9), b"\0" * (side * 3 + 1)  # filter byte + pixels
    idat = b"".join([z.compress(row) for _ in range(side)] + [z.flush()])
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def start_server() -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "VISALIGN_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "visalign.cli", *SERVER_ARGS], stdout=subprocess.PIPE, text=True,
                            env=env)
    line = proc.stdout.readline()
    if " on " not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, line.split(" on ")[1].split()[0]


def memory_mb(pid: int, key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of a process in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def well_behaved(url: str, clients: int, requests: int) -> tuple[list[float], list[str]]:
    """`clients` threads released at once, each scoring `requests` batches: (latencies of successes, failures)."""
    client = RemoteReward(url, timeout=30, retries=0, on_failure="stop")
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 64, 64, generator=gen) * 2 - 1
    barrier, lat, fails, lock = threading.Barrier(clients), [], [], threading.Lock()

    def one():
        barrier.wait()
        for _ in range(requests):
            start = time.perf_counter()
            try:
                ok = bool(torch.isfinite(client(images, [""] * 4).scores).all())
                err = None if ok else "non-finite scores"
            except Exception as e:  # noqa: BLE001 -- every failure is counted, whatever it is
                err = str(e)[:120]
            with lock:
                (fails.append(err) if err else lat.append(time.perf_counter() - start))

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return lat, fails


class Attackers:
    """Idle connections, slowloris and bomb posters, each in a thread, recording what happened to them."""

    def __init__(self, url: str, port: int, bomb: bytes):
        self.url, self.port, self.stop = url, port, threading.Event()
        self.body = json.dumps({"images": [base64.b64encode(bomb).decode()]}).encode()
        self.held = {"idle": [], "slowloris": []}  # seconds until the server dropped each
        self.bombs: list[tuple[int, float]] = []  # (HTTP code, seconds) of each bomb posted
        self.threads: list[threading.Thread] = []

    def start(self, idle: int, slowloris: int, bombs: int) -> None:
        for target, n in ((self.idle, idle), (self.slowloris, slowloris), (self.bomber, bombs)):
            self.threads += [threading.Thread(target=target, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def idle(self) -> None:
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            s.recv(1)  # returns b"" when the server closes
        self.held["idle"].append(time.perf_counter() - start)

    def slowloris(self) -> None:
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            try:
                for byte in b"POST /score HTTP/1.1\r\n" + b"X-Padding: " + b"a" * 10_000:
                    s.sendall(bytes([byte]))
                    time.sleep(0.25)
            except OSError:
                pass
        self.held["slowloris"].append(time.perf_counter() - start)

    def bomber(self) -> None:
        while not self.stop.is_set():
            start = time.perf_counter()
            req = urllib.request.Request(self.url + "/score", data=self.body, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    code = resp.status
            except urllib.error.HTTPError as e:
                code = e.code
            except OSError:
                code = 0
            self.bombs.append((code, time.perf_counter() - start))

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def row(name: str, n: int, lat: list[float], fails: int, note: str = "") -> str:
    med = f"{statistics.median(lat):.3f}" if lat else "-"
    worst = f"{max(lat):.3f}" if lat else "-"
    return f"| {name} | {n} | {len(lat)} | {fails} | {med} | {worst} | {note} |"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], check=False, capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--requests", type=int, default=4, help="requests per well-behaved client and phase")
    p.add_argument("--idle", type=int, default=10)
    p.add_argument("--slowloris", type=int, default=10)
    p.add_argument("--bombs", type=int, default=5, help="threads posting the 9000x9000 PNG in a loop")
    p.add_argument("--out", default="", help="also write the table to this markdown file")
    a = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    bomb = bomb_png()
    proc, url = start_server()
    port = int(url.rsplit(":", 1)[1])
    try:
        rss_start = memory_mb(proc.pid, "VmRSS")
        well_behaved(url, 1, 1)  # warm-up: the first request pays for imports and first calls
        lat_a, fail_a = well_behaved(url, a.clients, a.requests)
        hwm_a = memory_mb(proc.pid, "VmHWM")

        attack = Attackers(url, port, bomb)
        attack.start(a.idle, a.slowloris, a.bombs)
        time.sleep(0.5)  # every attacker connected before the well-behaved clients start
        probe = RemoteReward(url, timeout=30, retries=0)
        info_start = time.perf_counter()
        probe.info()
        info_s = time.perf_counter() - info_start
        lat_b, fail_b = well_behaved(url, a.clients, a.requests)
        attack.join()
        hwm_b = memory_mb(proc.pid, "VmHWM")
        alive = proc.poll() is None and probe.info()["name"] == "compressibility"
    finally:
        proc.kill()
        proc.wait()

    bomb_codes = sorted({c for c, _ in attack.bombs})
    n = a.clients * a.requests
    lines = [
        "| who | connections | requests answered 200 | failures | median s | worst s | notes |",
        "|---|---|---|---|---|---|---|",
        row("well-behaved, alone", a.clients, lat_a, len(fail_a), f"{n} requests of 4 images 64x64"),
        row("well-behaved, attackers connected", a.clients, lat_b, len(fail_b), f"{n} requests; GET /info "
            f"answered in {info_s:.3f} s as the attack began"),
        (f"| decompression bombs (0.24 MB PNG, 9000x9000) | {a.bombs} | 0 | - | "
         f"{statistics.median(s for _, s in attack.bombs):.3f} | {max(s for _, s in attack.bombs):.3f} | "
         f"{len(attack.bombs)} posted, answered {bomb_codes} from the PNG header |"),
        (f"| idle connections | {a.idle} | - | - | {statistics.median(attack.held['idle']):.2f} | "
         f"{max(attack.held['idle']):.2f} | seconds until dropped (--timeout 2) |"),
        (f"| slowloris (a byte per 0.25 s) | {a.slowloris} | - | - | "
         f"{statistics.median(attack.held['slowloris']):.2f} | {max(attack.held['slowloris']):.2f} | seconds until "
         "dropped (--deadline 5) |"),
    ]
    memory = (f"Server memory (resident): {rss_start:.0f} MB after start, peak {hwm_a:.0f} MB after the clients alone, "
              f"peak {hwm_b:.0f} MB after the attack (one bomb decoded would take 243 MB as uint8, 972 MB as the "
              f"float tensor). Server still answering at the end: {'yes' if alive else 'NO'}.")
    wall = time.perf_counter() - t0
    failures = sorted(set(fail_a + fail_b))[:3]
    report = "\n".join(lines) + f"\n\n{memory}\n" + (f"\nFailures seen: {failures}\n" if failures else "")
    print(report)
    print(f"wall time {wall:.1f} s")
    if a.out:
        cmd = "python benchmarks/reward_server_load.py " + " ".join(sys.argv[1:])
        head = (f"# Reward server under load ({datetime.date.today().isoformat()})\n\n"
                f"`{cmd}`, on {os.cpu_count()} CPU cores ({cpu_model()}), loopback, one run of {wall:.0f} s. "
                f"Server: `visalign {' '.join(SERVER_ARGS)}` in its own process; the clients run in the "
                "benchmark's process on the same 2 cores.\n\n"
                "Before (issue #34, one connection at a time, no timeouts): a GET /info waited 90 s behind one idle "
                "client, 20-25 of 50 parallel requests were reset, one such bomb took the server from 0.44 to "
                "3.3 GB.\n\n")
        Path(a.out).write_text(head + report)
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
