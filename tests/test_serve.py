"""`nextchar serve`: the HTTP API on a real uvicorn server (in a thread, on a free port), its
limits and errors, streams sharing the batch, disconnects, the CLI, and the page in Chromium."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

import nextchar
from nextchar.config import DynamicConfig, ServeLimits
from nextchar.errors import UserError
from nextchar.serve import bind, check_exposure
from processes import TINY_TEXT, cli, cli_output
from serving import events, running

JSON = {"Content-Type": "application/json"}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "tiny"
    nextchar.train(
        text=TINY_TEXT,
        out=out,
        steps=40,
        hidden=32,
        layers=2,
        embed=8,
        batch_size=4,
        seq_len=16,
        lr=1e-2,
        sample_chars=0,
        quiet=True,
    )
    return out


@pytest.fixture(scope="module")
def service(run):
    with running([run]) as served:
        yield served


@pytest.fixture(scope="module")
def url(service):
    return service[0]


@pytest.fixture
def client(url):
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


def cli_sample(*args) -> str:
    """`nextchar sample ...` in this process: its stdout."""
    code, out, err = cli_output("sample", *args)
    assert code == 0, err
    return out


def stream(client, body) -> list[tuple[str, dict]]:
    with client.stream("POST", "/v1/generate", json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return events(response.iter_lines())


def streamed_texts(found) -> list[str]:
    start = found[0][1]
    texts = [start["prime"]] * start["num_samples"]
    for name, data in found:
        if name == "text":
            texts[data["sample"]] += data["text"]
    return texts


def streams_in_use(client) -> int:
    return client.get("/healthz").json()["streams"]


def wait_for(predicate, timeout=5.0) -> float:
    """Seconds until `predicate()` held (fails past `timeout`)."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.005)
    return time.monotonic() - started


def raw_generate(url: str, body: bytes, length: int | None = None) -> socket.socket:
    """POST /v1/generate over a bare socket (its Content-Length `length`, by default the body's),
    left open for the caller to read or drop."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        f"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n\r\n".encode()
        + body
    )
    return sock


# ---- the API -----------------------------------------------------------------------------------


def test_health_models_and_the_page_files(client, run):
    assert client.get("/healthz").json() == {
        "status": "ok",
        "models": 1,
        "streams": 0,
        "max_streams": 128,
    }
    (model,) = client.get("/v1/models").json()["models"]
    config = json.loads((run / "config.json").read_text())["model"]
    assert model["name"] == "tiny" and model["cell"] == config["cell"] == "lstm"
    assert (model["layers"], model["hidden"], model["embed"]) == (2, 32, 8)
    assert model["vocab_size"] == len(json.loads((run / "vocab.json").read_text())["symbols"])
    final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert model["best_val_bits_per_char"] == pytest.approx(final["val"]["bits_per_char"])
    assert model["precision"] == "fp32" and model["parameters"] > 0
    for path in ("/", "/page.css", "/page.js"):
        response = client.get(path)
        assert response.status_code == 200
        assert "default-src 'none'" in response.headers["content-security-policy"]
        # nothing from the network: no absolute URL, no protocol-relative one
        assert not re.search(
            r"(https?:)?//[a-z0-9]", re.sub(r"/\*.*?\*/", "", response.text), re.I
        ), path
    report_css = (ROOT / "src" / "nextchar" / "report" / "page.css").read_text(encoding="utf-8")
    assert client.get("/page.css").text.startswith(report_css)  # the report's style, declared once


def test_a_lone_seeded_request_is_nextchar_sample(client, run):
    body = {"prime": "the ", "length": 120, "seed": 1234, "temperature": 0.8}
    answer = client.post("/v1/generate", json=body).json()
    expected = json.loads(
        cli_sample(
            run,
            "--prime",
            "the ",
            "--length",
            120,
            "--seed",
            1234,
            "--temperature",
            0.8,
            "--weights",
            "fp32",
            "--json",
        )
    )
    assert answer == {
        "model": "tiny",
        "seed": 1234,
        "prime": "the ",
        "samples": expected["samples"],
    }
    streamed = stream(client, body)
    assert [name for name, _ in streamed][0] == "start" and streamed[-1] == ("done", {"chars": 120})
    assert {name for name, _ in streamed[1:-1]} == {"text"}
    assert streamed_texts(streamed) == expected["samples"]
    # several samples, top-k / top-p and no seed: the seed used is returned and replays the text
    body = {"length": 50, "num_samples": 3, "top_k": 5, "top_p": 0.9}
    first = client.post("/v1/generate", json=body).json()
    again = client.post("/v1/generate", json={**body, "seed": first["seed"]}).json()
    assert again["samples"] == first["samples"] and len(first["samples"]) == 3
    printed = cli_sample(
        run,
        "--length",
        50,
        "--num-samples",
        3,
        "--top-k",
        5,
        "--top-p",
        0.9,
        "--seed",
        first["seed"],
        "--weights",
        "fp32",
    )
    assert printed == "\n\n".join(first["samples"]) + "\n"


def test_concurrent_streams_share_steps_and_keep_their_texts(client, url, service):
    bodies = [
        {
            "prime": "ab"[: i % 3],
            "length": 400 + 37 * i,
            "seed": 100 + i,
            "temperature": (0.7, 1.0)[i % 2],
            "num_samples": 1 + i % 2,
        }
        for i in range(8)
    ]
    alone = [client.post("/v1/generate", json=b).json()["samples"] for b in bodies]
    batcher = service[1][0].batcher
    widest = batcher.widest
    results = [None] * len(bodies)

    def one(i):
        with httpx.Client(base_url=url, timeout=60) as own:
            results[i] = streamed_texts(stream(own, bodies[i]))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == alone
    assert batcher.widest > max(widest, 2), "the streams never shared a step"


def test_a_disconnected_client_frees_its_slot_at_once(run):
    limits = ServeLimits(max_length=10**7)  # the dropped requests would run for minutes
    with (
        running([run], limits) as (url, models, problems),
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        keep = {"length": 3000, "seed": 7}
        expected = client.post("/v1/generate", json=keep).json()["samples"]
        kept = []
        other = threading.Thread(
            target=lambda: kept.append(streamed_texts(stream(httpx.Client(base_url=url), keep)))
        )
        other.start()
        for streamed in (True, False):
            sock = raw_generate(
                url, json.dumps({"length": 10**7, "seed": 8, "stream": streamed}).encode()
            )
            if streamed:
                head = b""
                while b"event: start" not in head:
                    head += sock.recv(4096)
            wait_for(lambda: streams_in_use(client) >= 2)
            sock.close()
            assert wait_for(lambda: streams_in_use(client) <= 1, timeout=2.0) < 1.0
        other.join(60)
        assert kept == [expected]
        wait_for(lambda: streams_in_use(client) == 0)
        assert not problems.errors()


BAD = [  # (body or raw bytes, headers, status, field, words in the message)
    (b'{"length": 5', JSON, 400, "body", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, JSON, 400, "body", "not valid JSON"),
    (b'{"prime": "a"}', {"Content-Type": "text/plain"}, 415, "content-type", "application/json"),
    (b'["length", 5]', JSON, 422, "body", "JSON object"),
    ({"lenght": 5}, JSON, 422, "lenght", "unknown field"),
    ({"length": 5.0}, JSON, 422, "length", "whole number"),
    ({"length": "5"}, JSON, 422, "length", "whole number"),
    ({"greedy": 1}, JSON, 422, "greedy", "true or false"),
    ({"temperature": "hot"}, JSON, 422, "temperature", "a number"),
    ({"length": -1}, JSON, 422, "length", "negative"),
    ({"length": 10**40}, JSON, 422, "length", "at most 5,000"),
    ({"temperature": 0}, JSON, 422, "temperature", "positive"),
    (b'{"temperature": NaN}', JSON, 422, "temperature", "finite"),
    ({"top_p": 1.5}, JSON, 422, "top_p", "(0, 1]"),
    ({"top_k": 0}, JSON, 422, "top_k", "at least 1"),
    ({"num_samples": 0}, JSON, 422, "num_samples", "at least 1"),
    ({"num_samples": 129}, JSON, 422, "num_samples", "--max-streams"),
    ({"seed": 2**64}, JSON, 422, "seed", "between"),
    ({"unknown": "ignore"}, JSON, 422, "unknown", "'error' or 'skip'"),
    ({"model": "nope"}, JSON, 422, "model", "'tiny'"),
    ({"prime": "the €uro ☃"}, JSON, 422, "prime", "'€' (U+20AC), '☃' (U+2603)"),
    ({"prime": "x" * 20_001}, JSON, 422, "prime", "--max-text"),
    ({"prime": "€", "unknown": "skip"}, JSON, 422, "prime", "outside the vocabulary"),
    (b"x" * (1 << 20 + 1), JSON, 413, "body", "--max-body"),
]


@pytest.mark.parametrize(
    "body, headers, status, field, words",
    BAD,
    ids=[f"{s}-{f}-{i}" for i, (_, _, s, f, _) in enumerate(BAD)],
)
def test_bad_generate_requests_are_4xx_naming_the_field(
    client, body, headers, status, field, words
):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post("/v1/generate", content=content, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field and words in error["message"], error


def test_bad_requests_leave_running_streams_alone(client, url, service):
    body = {"length": 2500, "seed": 21, "prime": "the"}
    expected = client.post("/v1/generate", json=body).json()["samples"]
    got = []
    worker = threading.Thread(
        target=lambda: got.append(streamed_texts(stream(httpx.Client(base_url=url), body)))
    )
    worker.start()
    wait_for(lambda: streams_in_use(client) == 1)
    for content, headers, status, _, _ in BAD:
        content = content if isinstance(content, bytes) else json.dumps(content).encode()
        assert client.post("/v1/generate", content=content, headers=headers).status_code == status
    # chunked, with no length: counted as it arrives
    big = client.post("/v1/generate", content=iter([b"{" + b" " * 65536] * 20), headers=JSON)
    assert big.status_code == 413
    assert (
        client.get("/v1/generate").status_code == 405 and client.get("/nowhere").status_code == 404
    )
    worker.join(60)
    assert got == [expected]
    assert not service[2].errors()


def test_a_ten_megabyte_body_is_refused_before_it_is_read(url, client):
    sock = raw_generate(url, b'{"prime": "', length=10 << 20)
    answer = b""
    while b"}}" not in answer:
        answer += sock.recv(65536)
    answer = answer.decode()
    sock.close()
    assert answer.startswith("HTTP/1.1 413") and '"field":"body"' in answer
    assert client.get("/healthz").status_code == 200


def test_score_matches_eval_and_the_report(client, run):
    text = "0: the quick brown fox jumps over the lazy dog.\n1: the €uro ☃ quick"
    answer = client.post("/v1/score", json={"text": text}).json()
    model = nextchar.load(run)
    expected = model.evaluate(text, "fp32")
    assert answer["chars"] == expected.chars
    assert answer["bits_per_char"] == pytest.approx(expected.bits_per_char, abs=1e-4)
    assert answer["perplexity"] == pytest.approx(2**expected.bits_per_char, rel=1e-4)
    assert answer["accuracy"] == pytest.approx(expected.accuracy)
    assert (answer["unknown_chars"], answer["unknown_symbols"]) == (2, ["€", "☃"])
    chars = answer["characters"]
    assert "".join(c["char"] for c in chars) == text
    from nextchar.report.analysis import analyse

    analysis = analyse(model.module, model.vocab, text)
    for c, bits, top, known in zip(chars, analysis.bits, analysis.top, analysis.known):
        assert c["known"] == bool(known)
        assert (c["bits"] is None) == (not bits == bits)  # NaN: not scored
        if c["bits"] is not None:
            assert c["bits"] == pytest.approx(bits, abs=1e-4)
            assert [s for s, _ in c["top"]] == [s for s, _ in top] and len(top) == 5
    assert chars[0]["bits"] is None and chars[0]["known"]
    lone = client.post("/v1/score", content=b'{"text": "the \\ud800 fox"}', headers=JSON)
    assert lone.status_code == 200 and lone.json()["unknown_symbols"] == ["\ud800"]
    for body, field in (
        ({"text": "x" * 20_001}, "text"),
        ({"text": "€"}, "text"),
        ({}, "text"),
        ({"text": 5}, "text"),
        ({"text": "ab", "model": "x"}, "model"),
        ({"text": "ab", "top": 3}, "top"),
    ):
        response = client.post("/v1/score", json=body)
        assert response.status_code == 422 and response.json()["error"]["field"] == field, body


def test_score_can_add_a_dynamic_figure_beside_the_static_one(client, run):
    text = "0: the quick brown fox jumps over the lazy dog.\n" * 6 + "1: the €uro"
    static = client.post("/v1/score", json={"text": text}).json()
    answer = client.post("/v1/score", json={"text": text, "dynamic": True}).json()
    expected = nextchar.load(run).evaluate(text, dynamic=DynamicConfig())
    assert answer["dynamic"]["chars"] == expected.chars == answer["chars"]
    assert answer["dynamic"]["bits_per_char"] == pytest.approx(expected.bits_per_char, rel=1e-6)
    assert answer["dynamic"]["bits_per_char"] != pytest.approx(answer["bits_per_char"], rel=1e-4)
    assert (answer["dynamic"]["lr"], answer["dynamic"]["window"]) == (
        DynamicConfig().lr,
        DynamicConfig().window,
    )
    del answer["dynamic"]
    assert answer == static  # the static figures and the per-character view are unchanged
    response = client.post("/v1/score", json={"text": text, "dynamic": "yes"})
    assert response.status_code == 422 and response.json()["error"]["field"] == "dynamic"


# ---- limits, keys, exposure ----------------------------------------------------------------------


def test_capacity_and_timeouts(run):
    limits = ServeLimits(max_streams=2, max_length=10**7, request_timeout=0.5)
    with (
        running([run], limits) as (url, _, problems),
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        assert (
            client.post("/v1/generate", json={"num_samples": 3}).json()["error"]["field"]
            == "num_samples"
        )
        late = client.post("/v1/generate", json={"length": 10**7})
        assert late.status_code == 503 and late.json()["error"]["field"] == "length"
        assert "--request-timeout" in late.json()["error"]["message"]
        found = stream(client, {"length": 10**7})
        assert found[-1][0] == "error" and found[-1][1]["error"]["field"] == "length"
        socks = [
            raw_generate(url, json.dumps({"length": 10**7, "stream": True}).encode())
            for _ in range(2)
        ]
        wait_for(lambda: streams_in_use(client) == 2)
        busy = client.post("/v1/generate", json={"length": 5})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["field"] == "num_samples"
        for sock in socks:
            sock.close()
        wait_for(lambda: streams_in_use(client) == 0)
        assert client.post("/v1/generate", json={"length": 5}).status_code == 200
        assert not problems.errors()


def test_idle_and_half_sent_connections_are_closed(run):
    with running([run], keep_alive_s=1) as (url, _, _):
        host, port = url.removeprefix("http://").split(":")
        for sent in (b"", b"POST /v1/gen", b"\x16\x03\x01\x02\x00garbage"):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(sent)
            started = time.monotonic()
            while sock.recv(100):  # to the end: the service closes it (garbage gets a 400 first)
                pass
            assert time.monotonic() - started < 5, sent
            sock.close()
        # a kept-alive connection still serves several requests within the timeout
        with httpx.Client(base_url=url) as client:
            assert [client.get("/healthz").status_code for _ in range(3)] == [200] * 3


def test_api_key(run):
    with running([run], api_key="s3cret") as (url, _, _), httpx.Client(base_url=url) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = client.get("/v1/models", headers=headers)
            assert (
                response.status_code == 401 and response.json()["error"]["field"] == "authorization"
            )
            assert response.headers["www-authenticate"] == "Bearer"
            assert (
                client.post("/v1/generate", json={"length": 3}, headers=headers).status_code == 401
            )
        key = {"Authorization": "Bearer s3cret"}
        assert client.get("/v1/models", headers=key).status_code == 200
        assert client.post("/v1/score", json={"text": "the"}, headers=key).status_code == 200
        assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200


def test_only_loopback_without_a_key():
    for host in ("127.0.0.1", "::1", "localhost"):
        check_exposure(host, None, False)
    for host in ("0.0.0.0", "::", "8.8.8.8"):
        with pytest.raises(UserError, match="--api-key"):
            check_exposure(host, None, False)
        check_exposure(host, "key", False)
        check_exposure(host, None, True)


def test_serve_cli_refusals_are_one_line(run, monkeypatch):
    monkeypatch.delenv("NEXTCHAR_API_KEY", raising=False)
    code, err = cli("serve", run, "--host", "0.0.0.0")
    assert code == 2 and "--allow-public" in err and len(err.strip().splitlines()) == 1
    taken = bind("127.0.0.1", 0)
    code, err = cli("serve", run, "--port", taken.getsockname()[1])
    taken.close()
    assert code == 2 and "another service has it" in err and len(err.strip().splitlines()) == 1
    for args, words in (
        ([run, "--max-length", "0"], "--max-length"),
        ([run, "--port", "70000"], "--port"),
        ([run, "--request-timeout", "soon"], "request-timeout"),
        ([run, f"{run}/nope"], "no run folder"),
        ([run, run], "NAME=RUN"),
    ):
        code, err = cli("serve", "--port", 0, *args)  # never the default port, which may be taken
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_serve_command_end_to_end(run, tmp_path):
    """The real command: it binds, says where, answers, and stops on Ctrl-C."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NEXTCHAR_API_KEY": "k"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nextchar",
            "serve",
            f"shakespeare={run}",
            "--port",
            "0",
            "--weights",
            "fp32",
            "--quiet",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        while not any(" at http://" in line for line in lines):
            line = proc.stderr.readline()
            assert line, f"ended early: {''.join(lines)}"
            lines.append(line)
        url = re.search(r"at (http://\S+)/ ", lines[-1]).group(1)
        key = {"Authorization": "Bearer k"}
        answer = httpx.post(
            f"{url}/v1/generate",
            json={"prime": "the ", "length": 30, "seed": 3},
            headers=key,
            timeout=30,
        ).json()
        assert answer["model"] == "shakespeare"
        assert answer["samples"] == [
            cli_sample(
                run, "--prime", "the ", "--length", 30, "--seed", 3, "--weights", "fp32"
            ).rstrip("\n")
        ]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130  # stopped gracefully, by Ctrl-C: as `train` does
        rest = proc.stderr.read()
        assert "Traceback" not in rest and "ERROR" not in rest, rest
        assert rest.strip().endswith("nextchar serve: interrupted")
    finally:
        if proc.poll() is None:
            proc.kill()


# ---- the page in a real browser -------------------------------------------------------------------


def browser_or_skip() -> str:
    """The system Chromium for Playwright; a missing one fails under CI, else skips."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI is set but playwright is not installed (pip install -e '.[dev]')")
        pytest.skip("playwright is not installed; the page test needs it")
    for path in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if path and os.path.exists(path):
            return path
    if os.environ.get("CI"):
        pytest.fail("CI is set but chromium is not installed (apt-get install chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium); the page test needs it")


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def until(page, condition: str, timeout: float = 30.0) -> None:
    """Wait for a JavaScript condition (page.evaluate runs under the page's policy, which
    forbids the string evaluation that page.wait_for_function needs)."""
    wait_for(lambda: page.evaluate(condition), timeout)


@pytest.mark.slow
def test_the_page_generates_and_shades_in_chromium(url, client):
    executable = browser_or_skip()
    from playwright.sync_api import sync_playwright

    pasted = "0: the quick brown fox jumps over the lazy dog.\n1: the €uro\u202e."
    expected = client.post("/v1/score", json={"text": pasted}).json()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            requested, problems = [], []
            page.on("request", lambda r: requested.append(r.url))
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(url + "/")
            until(page, "document.getElementById('model').options.length === 1")
            # generate: type a prime, press the button, watch the text grow as it streams
            page.fill("#prime", "the ")
            page.fill("#length", "5000")  # the service's most: streams for several 50 ms flushes
            page.fill("#temperature", "1")
            page.click("#generate")
            sizes = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                sizes.append(len(page.inner_text("#output")))
                if sizes[-1] >= len("the ") + 5000:
                    break
                time.sleep(0.02)
            assert sizes[-1] == len("the ") + 5000 and page.inner_text("#output").startswith("the ")
            # seen at two sizes on the way at least: a tiny model on a fast CPU draws 5000
            # characters in a few flushes (3000 arrived as 907, 2115, all on an AMD Zen 5)
            growing = [s for s in sizes if 4 < s < 5004]
            assert len(set(growing)) >= 2, f"the text did not grow in steps: {sizes}"
            until(page, "!document.getElementById('generate').disabled")
            # surprisal: paste text, one shaded element per character
            page.fill("#score-text", pasted)
            page.dispatch_event("#score-text", "paste")
            until(page, f"document.querySelectorAll('#surprisal .ch').length === {len(pasted)}")
            spans = page.eval_on_selector_all(
                "#surprisal .ch",
                "s => s.map(e => [e.textContent, e.style.backgroundColor, e.title, e.className])",
            )
            assert len(spans) == len(pasted)
            shaded = [s for s in spans if s[1]]
            assert len(shaded) == expected["chars"]  # every scored character, and only those
            assert [s[3] for s in spans].count("ch unk") == 1 and spans[0][3] == "ch first"  # the €
            assert spans[-2][:1] == ["U+202E"] and "ctl" in spans[-2][3]  # shown, not obeyed
            assert all("bits" in s[2] and "expected:" in s[2] for s in shaded)
            assert all(u.startswith(url) for u in requested), [
                u for u in requested if not u.startswith(url)
            ]
            assert not problems, problems
        finally:
            browser.close()


def test_streams_flush_less_often_when_many_are_open():
    """A stream alone sends every 50 ms; 64 together every 100 ms (640 events a second in all)."""
    from nextchar.serve.streams import flush_interval

    assert flush_interval(1) == flush_interval(32) == 0.05
    assert flush_interval(64) == pytest.approx(0.1)
    assert 64 / flush_interval(64) == pytest.approx(128 / flush_interval(128))
