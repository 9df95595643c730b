"""`nextchar serve` under load, against `nextchar sample --num-samples N` in the same run.

    python bench/serve.py                    # the floors: 64 clients x 500 chars, 2x512 LSTM
    python bench/serve.py --clients 4 --length 50 --sequential 40 --hidden 64 --rounds 1  # a quick check

A 2x512 LSTM (random weights: speed does not depend on training) is saved as a run folder and
served by `nextchar serve` in a subprocess; the clients are bare asyncio HTTP/1.0 connections
in this process (httpx for the sequential requests).

    load        N concurrent streaming clients x L characters, seeded, all started at once.
                Total chars/s (first request sent to last character received) against the
                sampler `nextchar sample --num-samples N --length L` runs (Sampler.generate, in
                this process, start-up excluded, the service's weight format), medians of
                --rounds. Time to first character (request sent -> first text event): median
                and p99. Floors: every request succeeds; ratio >= 0.8; p99 < 1 s. Also counted:
                how many streamed texts equal their text alone (docs/serving.md says when they
                may not).
    memory      --sequential requests one after another (JSON generate, every 10th streamed,
                every 10th a score); the service's resident memory after the first 10% and at
                the end. Floor: growth < 5%.
    faults      the load again, while other clients drop streams mid-way, send garbage and
                malformed JSON, send a 10 MB body, and hold connections open sending nothing.
                Floors: every well-formed request completes with its full length, the service
                still answers, and it logged no error (uvicorn's warnings about invalid HTTP are
                not errors).
    onnx        one stream sampled from `nextchar export`'s file under onnxruntime (numpy
                Gumbel-max draws, CPU) beside `nextchar sample`'s one stream; reported, no floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import finish, machine, report  # noqa: E402
from nextchar.api import load  # noqa: E402
from nextchar.config import SampleConfig  # noqa: E402
from nextchar.sample import Sampler  # noqa: E402
from sampling import make_run  # noqa: E402

# ---- the service -------------------------------------------------------------------------------


class Service:
    """`nextchar serve RUN --port 0` in a subprocess; its stderr is collected."""

    def __init__(self, run: Path, *flags: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nextchar", "serve", str(run), "--port", "0", "--quiet", *flags],
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        while True:
            line = self.proc.stderr.readline()
            if not line:
                raise SystemExit("nextchar serve ended early:\n" + "".join(self.lines))
            self.lines.append(line)
            found = re.search(r" at (http://\S+)/ ", line)
            if found:
                self.url = found.group(1)
                break
        self.reader = threading.Thread(
            target=lambda: self.lines.extend(self.proc.stderr), daemon=True
        )
        self.reader.start()

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def errors(self) -> list[str]:
        return [
            line
            for line in self.lines
            if "ERROR" in line or "Traceback" in line or "CRITICAL" in line
        ]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ---- clients -----------------------------------------------------------------------------------


async def stream_one(url: str, body: dict) -> dict:
    """One streamed generate over a bare HTTP/1.0 connection (httpx's pool, with 64 streams at
    once, cost more CPU here than the service itself): its text, seconds from connecting to the
    first character, success."""
    host, port = host_port(url)
    sent = time.perf_counter()
    payload = json.dumps({**body, "stream": True}).encode()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /v1/generate HTTP/1.0\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    while (await reader.readline()) not in (b"\r\n", b""):  # the headers
        pass
    first, texts, ok, event = None, {}, False, None
    while status == 200:
        line = await reader.readline()
        if not line:
            break
        if line.startswith(b"event: "):
            event = line[7:].strip().decode()
        elif line.startswith(b"data: "):
            data = json.loads(line[6:])
            if event == "start":
                texts = {i: data["prime"] for i in range(data["num_samples"])}
            elif event == "text":
                if first is None:
                    first = time.perf_counter() - sent
                texts[data["sample"]] += data["text"]
            elif event == "done":
                ok = True
    writer.close()
    return {"ok": ok, "status": status, "ttfc": first, "text": texts.get(0, "")}


async def load_round(
    url: str, clients: int, length: int, seed0: int = 0
) -> tuple[float, list[dict]]:
    """`clients` seeded streams at once: (total chars/s, per-request results)."""
    started = time.perf_counter()
    results = await asyncio.gather(
        *[stream_one(url, {"length": length, "seed": seed0 + i}) for i in range(clients)]
    )
    return clients * length / (time.perf_counter() - started), results


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


# ---- faults ------------------------------------------------------------------------------------


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


async def raw_post(url: str, body: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = host_port(url)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /v1/generate HTTP/1.0\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    return reader, writer


async def drop_mid_stream(url: str, length: int, seed: int) -> bool:
    """Start a long stream and hang up after its first characters."""
    reader, writer = await raw_post(
        url, json.dumps({"length": length * 10, "seed": seed, "stream": True}).encode()
    )
    while (line := await reader.readline()) and not line.startswith(b"event: text"):
        pass
    writer.close()
    return bool(line)


async def garbage(url: str, seed: int) -> None:
    """2,000 random bytes on a bare connection, then hang up."""
    host, port = host_port(url)
    _, writer = await asyncio.open_connection(host, port)
    writer.write(np.random.default_rng(seed).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    await writer.drain()
    await asyncio.sleep(0.5)
    writer.close()


MALFORMED = [
    b'{"length": ',
    b'{"length": 5.5}',
    b'{"prime": "\\ud800"}',
    b"[" * 50_000,
    b'{"length": 500, "lenght": 5}',
    b'{"top_p": 7}',
    b"\xff\xfe{}",
    b'{"model": "none"}',
]


async def malformed(url: str, body: bytes) -> int:
    """A well-formed HTTP request with a bad body: the status it gets."""
    reader, writer = await raw_post(url, body)
    status = int((await reader.readline()).split()[1])
    writer.close()
    return status


def ten_megabytes(url: str) -> str:
    """POST a 10 MB body, sent for real; the status line seen, or how the connection ended."""
    host, port = host_port(url)
    body = b"{" + b" " * (10 << 20) + b"}"
    sock = socket.create_connection((host, port), timeout=30)
    try:
        sock.sendall(
            b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        try:
            sock.sendall(body)
        except OSError:
            pass  # refused before it was all sent
        return sock.recv(100).split(b"\r\n")[0].decode() or "closed"
    except OSError as exc:
        return f"connection ended ({exc.__class__.__name__})"
    finally:
        sock.close()


async def fault_round(url: str, clients: int, length: int) -> tuple[list[dict], dict]:
    """The load, with every kind of fault started at the same moment."""
    host, port = host_port(url)
    idle = [socket.create_connection((host, port)) for _ in range(8)]  # held open, sending nothing
    big = asyncio.get_running_loop().run_in_executor(None, ten_megabytes, url)
    load_task = asyncio.ensure_future(load_round(url, clients, length, seed0=5000))
    found = await asyncio.gather(
        *[drop_mid_stream(url, length, 10_000 + i) for i in range(16)],
        *[garbage(url, i) for i in range(8)],
        *[malformed(url, body) for body in MALFORMED],
    )
    _, results = await load_task
    statuses = found[24:]
    faults = {
        "dropped": sum(found[:16]),
        "refused": sum(400 <= s < 500 for s in statuses),
        "malformed": len(statuses),
        "ten_mb": await big,
    }
    for sock in idle:
        sock.close()
    return results, faults


# ---- memory ------------------------------------------------------------------------------------


async def sequential(service: Service, count: int) -> tuple[float, float]:
    """RSS (MB) after the first 10% of `count` requests and after all of them."""
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:
        warm = None
        for i in range(count):
            if i % 10 == 3:
                await client.post("/v1/score", json={"text": "the quick brown fox " * 10})
            elif i % 10 == 7:
                await stream_one(service.url, {"length": 50, "seed": i})
            else:
                response = await client.post("/v1/generate", json={"length": 50, "seed": i})
                assert response.status_code == 200, response.text
            if i + 1 == max(1, count // 10):
                warm = service.rss_mb()
    return warm, service.rss_mb()


# ---- onnx --------------------------------------------------------------------------------------


def onnx_one_stream_cps(run: Path, length: int) -> float:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        subprocess.run(
            [sys.executable, "-m", "nextchar", "export", str(run), "--out", str(path)],
            check=True,
            capture_output=True,
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    shape = session.get_inputs()[1].shape
    layers, hidden = shape[0], shape[2]
    feed = {n: np.zeros((layers, 1, hidden), np.float32) for n in names if n != "ids"}
    feed["ids"] = np.zeros((1, 1), np.int64)
    rng = np.random.default_rng(0)
    outputs = [o.name for o in session.get_outputs()]
    started = time.perf_counter()
    for _ in range(length):
        result = dict(zip(outputs, session.run(None, feed)))
        logits = result["logits"][0, -1]
        ids = int(np.argmax(logits - np.log(-np.log(rng.random(logits.shape)))))
        feed = {"ids": np.array([[ids]], np.int64), "h": result["h_out"]}
        if "c" in names:
            feed["c"] = result["c_out"]
    return length / (time.perf_counter() - started)


def sampler_cps(sampler: Sampler, streams: int, length: int, rounds: int) -> float:
    """Total chars/s of Sampler.generate (what `nextchar sample --num-samples streams` runs)."""
    config = SampleConfig(length=length, num_samples=streams, seed=1)
    sampler.generate(SampleConfig(length=20, num_samples=streams, seed=1))  # warm up
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        sampler.generate(config)
        times.append(time.perf_counter() - started)
    return streams * length / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--length", type=int, default=500)
    parser.add_argument("--sequential", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--onnx-length", type=int, default=2000)
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        make_run(run, hidden=args.hidden)
        service = Service(run)
        try:
            info = httpx.get(f"{service.url}/v1/models").json()["models"][0]
            precision = info["precision"]
            print(
                f"served: lstm {info['layers']}x{info['hidden']}, {precision} weights", flush=True
            )
            model = load(run)
            sampler = Sampler(model.module, model.vocab, precision)
            asyncio.run(
                load_round(service.url, args.clients, 20)
            )  # warm up: first calls, connections
            # load, against the sampler in this process (the service idle meanwhile)
            served_cps, results = [], []
            for _ in range(args.rounds):
                cps, found = asyncio.run(load_round(service.url, args.clients, args.length))
                served_cps.append(cps)
                results += found
            reference = sampler_cps(sampler, args.clients, args.length, args.rounds)
            ok = sum(r["ok"] for r in results)
            report(f"load: requests completed of {len(results)}", ok, "", floor=len(results))
            report(
                f"load: {args.clients} streaming clients x {args.length} chars",
                statistics.median(served_cps),
                "chars/s",
                reference=reference,
                ref_name=f"sample --num-samples {args.clients}",
                ratio_floor=0.8,
            )
            ttfc = [r["ttfc"] for r in results if r["ttfc"] is not None]
            report("load: time to first character, median", statistics.median(ttfc), "s")
            report(
                "load: time to first character, p99",
                percentile(ttfc, 99),
                "s",
                floor=1.0,
                floor_is_max=True,
            )
            alone = [
                sampler.generate(SampleConfig(length=args.length, seed=i))[0]
                for i in range(args.clients)
            ]
            same = sum(r["text"] == alone[i % args.clients] for i, r in enumerate(results))
            print(
                f"load: streamed texts equal to their text alone: {same} of {len(results)}",
                flush=True,
            )
            # memory over sequential requests
            warm, end = asyncio.run(sequential(service, args.sequential))
            report(
                f"memory: RSS growth over {args.sequential} sequential requests (from {warm:.0f} MB)",
                100 * (end - warm) / warm,
                "%",
                floor=5.0,
                floor_is_max=True,
            )
            # faults during a load
            results, faults = asyncio.run(fault_round(service.url, args.clients, args.length))
            print(
                f"faults: {faults['dropped']} streams dropped mid-way, {faults['refused']} of "
                f"{faults['malformed']} malformed requests refused (4xx), 8 connections of garbage, "
                f"8 idle ones, a 10 MB body: {faults['ten_mb']}",
                flush=True,
            )
            complete = sum(r["ok"] and len(r["text"]) >= args.length for r in results)
            report(
                "faults: well-formed requests completed",
                complete,
                f"of {len(results)}",
                floor=len(results),
            )
            alive = httpx.get(f"{service.url}/healthz").json()["status"] == "ok"
            report("faults: service answers afterwards", float(alive), "", floor=1.0)
            errors = service.errors()
            report("faults: errors logged", len(errors), "", floor=0, floor_is_max=True)
            for line in errors[:10]:
                print("   ", line.rstrip(), flush=True)
        finally:
            service.stop()
        # ONNX, one stream, beside nextchar's one stream
        one = Sampler(model.module, model.vocab, "auto")
        ours = sampler_cps(one, 1, args.onnx_length, args.rounds)
        report(
            "onnx: one stream under onnxruntime",
            onnx_one_stream_cps(run, args.onnx_length),
            "chars/s",
            reference=ours,
            ref_name=f"nextchar sample ({one.choices[1].value})",
        )
    finish()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
