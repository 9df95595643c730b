import base64
import json
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import nextchar
from nextchar.data import load_prepared
from nextchar.errors import UserError
from nextchar.report import analyse, text_properties, unit_correlations, write_report
from nextchar.runfolder import RunFolder

LINE = 'He said "the quick (brown) fox" jumps over the lazy dog; naïve café.\n'
TEXT = "".join(f"{i}: {LINE}" for i in range(120))
HIDDEN = 32
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SECTIONS = ("summary", "curves", "samples", "surprisal-view", "neuron-view")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "tiny"
    nextchar.train(
        text=TEXT,
        out=out,
        steps=40,
        hidden=HIDDEN,
        layers=1,
        embed=16,
        batch_size=4,
        seq_len=16,
        eval_every=10,
        sample_chars=30,
        quiet=True,
    )
    return out


@pytest.fixture(scope="module")
def report(run):
    return write_report(run)


@pytest.fixture(scope="module")
def model(run):
    return nextchar.load(run)


def val_passage(run) -> str:
    """The run's val split, read straight from its data folder: the report's default passage."""
    data = load_prepared(run / "data")
    lo, hi = data.splits["val"]
    return data.vocab.decode(np.asarray(data.tokens[lo : min(hi, lo + 2000)]))


VOID = {"br", "img", "meta", "input", "hr", "link", "source", "wbr"}


class Elements(HTMLParser):
    """Start tags (tag, attrs, text inside) found inside the element with id `container`."""

    def __init__(self, container: str):
        super().__init__(convert_charrefs=True)
        self.container = container
        self.depth = 0  # > 0 while inside the container
        self.found: list[dict] = []
        self.open: list[dict] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if self.depth == 0:
            if attrs.get("id") == self.container and tag not in VOID:
                self.depth = 1
            return
        element = {"tag": tag, "attrs": attrs, "text": ""}
        self.found.append(element)
        if tag not in VOID:
            self.depth += 1
            self.open.append(element)

    def handle_endtag(self, tag):
        if self.depth == 0 or tag in VOID:
            return
        self.depth -= 1
        if self.open and self.depth > 0:
            self.open.pop()

    def handle_data(self, data):
        if self.depth > 1 and self.open:
            self.open[-1]["text"] += data


def elements(
    page: str, container: str, tag: str | None = None, cls: str | None = None
) -> list[dict]:
    parser = Elements(container)
    parser.feed(page)
    return [
        e
        for e in parser.found
        if (tag is None or e["tag"] == tag)
        and (cls is None or cls in e["attrs"].get("class", "").split())
    ]


def reference_bits(module, vocab, text: str) -> torch.Tensor:
    """F.cross_entropy over one plain forward pass, in bits: (len(known) - 1,)."""
    ids = torch.tensor(vocab.encode(text, unknown="skip"))[None]  # (1, K)
    with torch.no_grad():
        logits, _ = module(ids)  # (1, K, V)
    return F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="none") / math.log(2)


# ---- the page --------------------------------------------------------------------------------


def test_report_is_written_into_the_run(run, report):
    assert report == run / "report.html"
    page = report.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    assert not list(run.glob(".report.html.tmp-*"))


def test_report_needs_no_network(report):
    page = report.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "@import" not in page and "url(" not in page
    sources = re.findall(r'\bsrc="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    png = base64.b64decode(sources[0].split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    scripts = re.findall(r"<script([^>]*)>", page)
    assert scripts and all("src=" not in attrs for attrs in scripts)


def test_summary_shows_the_run(run, report, model):
    rows = {}
    for row in re.findall(
        r"<tr><td>(.*?)</td><td[^>]*>(.*?)</td></tr>", report.read_text(encoding="utf-8")
    ):
        rows[row[0]] = row[1]
    final = [r for r in RunFolder(run).read_metrics() if r["kind"] == "final"][-1]
    assert rows["vocabulary"] == f"{len(model.vocab)} symbols"
    assert rows["model"] == "lstm, 1 layer x 32 hidden, embedding 16"
    assert rows["parameters"] == f"{model.module.num_parameters():,}"
    assert rows["training"].startswith("40 steps, ")
    assert rows["best val"].startswith(f"{final['val']['bits_per_char']:.4f} bits/char")
    assert rows["test"].startswith(f"{final['test']['bits_per_char']:.4f} bits/char")
    assert "text.txt (8," in rows["data"]  # the source file and its length in characters


def test_samples_from_every_evaluation(run, report):
    page = report.read_text(encoding="utf-8")
    evals = [r for r in RunFolder(run).read_metrics() if r["kind"] == "eval"]
    pres = elements(page, "samples", "pre")
    assert len(pres) == len(evals) == 4
    for pre, record in zip(pres, evals):
        assert pre["text"] == record["sample"]  # escaped in the page, whitespace kept
    metas = [e["text"] for e in elements(page, "samples", "div", "meta")]
    assert (
        metas[0].startswith("step 10 ") and f"val {evals[0]['val_bpc']:.3f} bits/char" in metas[0]
    )


# ---- surprisal -------------------------------------------------------------------------------


def test_one_span_per_character_in_both_views(run, report):
    page = report.read_text(encoding="utf-8")
    passage = val_passage(run)
    for view in ("surprisal", "neurons"):
        spans = elements(page, view, cls="ch")
        assert len(spans) == len(passage)
        shown = "".join(s["text"] for s in spans)
        assert shown == passage.replace("\n", "↵")
        assert len(elements(page, view, "br")) == passage.count("\n")


def test_surprisal_equals_cross_entropy_in_bits(run, report, model):
    passage = val_passage(run)
    expected = reference_bits(model.module, model.vocab, passage)
    analysis = analyse(model.module, model.vocab, passage)
    assert math.isnan(analysis.bits[0])
    assert np.allclose(analysis.bits[1:], expected.numpy(), atol=1e-5)
    spans = elements(report.read_text(encoding="utf-8"), "surprisal", cls="ch")
    assert "data-bits" not in spans[0]["attrs"] and "first" in spans[0]["attrs"]["class"]
    shown = np.array([float(s["attrs"]["data-bits"]) for s in spans[1:]])
    assert np.allclose(shown, expected.numpy(), atol=1e-4)
    # the mean over the passage is the model's bits/char on it, as evaluate computes it; both
    # sides in fp32 (analyse always is), where the two sums differ only in summation order
    exact = model.evaluate(passage, precision="fp32").bits_per_char
    assert analysis.bits[1:].mean() == pytest.approx(exact, rel=1e-5)


def test_top_predictions_are_the_softmax_top_5(run, model):
    passage = val_passage(run)[:50]
    ids = torch.tensor(model.vocab.encode(passage))[None]
    with torch.no_grad():
        probs = F.softmax(model.module(ids)[0][0], dim=-1)  # (T, V)
    analysis = analyse(model.module, model.vocab, passage)
    assert analysis.top[0] == []
    for t in range(1, len(passage)):
        p, c = probs[t - 1].topk(5)
        assert [s for s, _ in analysis.top[t]] == [model.vocab.symbols[i] for i in c.tolist()]
        assert [q for _, q in analysis.top[t]] == pytest.approx(p.tolist(), abs=1e-6)


def test_unknown_characters_are_shown_but_not_scored(run, model, tmp_path):
    text = "He said € 42 (fox) — «the lazy dog»\nand the quick fox jumps."
    unknown = [t for t, c in enumerate(text) if c not in model.vocab]
    assert unknown  # €, —, «, » and perhaps more are outside the tiny vocabulary
    source = tmp_path / "passage.txt"
    source.write_text(text, encoding="utf-8")
    out = write_report(run, text_file=source, out=tmp_path / "r.html")
    spans = elements(out.read_text(encoding="utf-8"), "surprisal", cls="ch")
    assert len(spans) == len(text)
    for t in unknown:
        assert "unk" in spans[t]["attrs"]["class"] and "data-bits" not in spans[t]["attrs"]
        assert "not in the" in spans[t]["attrs"]["title"]
    scored = [float(s["attrs"]["data-bits"]) for s in spans if "data-bits" in s["attrs"]]
    # the model reads past unknown characters, as Model.evaluate does
    assert np.allclose(scored, reference_bits(model.module, model.vocab, text).numpy(), atol=1e-4)
    short = write_report(run, text_file=source, out=tmp_path / "s.html", passage_chars=10)
    assert len(elements(short.read_text(encoding="utf-8"), "surprisal", cls="ch")) == 10


# ---- neurons ---------------------------------------------------------------------------------


def test_neuron_view_embeds_the_top_layer_activations(run, report, model):
    page = report.read_text(encoding="utf-8")
    passage = val_passage(run)
    match = re.search(
        r'<script type="application/json" id="activations">(.*?)</script>', page, re.S
    )
    data = json.loads(match.group(1))
    units = np.array(data["units"], dtype=float) / data["scale"]  # (H, N)
    assert units.shape == (HIDDEN, len(passage))
    ids = torch.tensor(model.vocab.encode(passage))[None]
    with torch.no_grad():
        plain = torch.nn.LSTM(16, HIDDEN, batch_first=True)
        plain.load_state_dict(model.module.rnn.state_dict())
        top, _ = plain(model.module.embed(ids))  # (1, N, H)
    assert np.abs(units - top[0].numpy().T).max() <= 0.005 + 1e-6
    options = elements(page, "unit", "option")
    assert [int(o["attrs"]["value"]) for o in options] == list(range(HIDDEN))


def test_text_properties_by_hand():
    props = text_properties('a "b (c)" d\nef')
    assert props["inside quotes"].tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert props["inside parentheses"].tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert props["position in line"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0, 1]
    assert props["after a newline"].tolist() == [0] * 11 + [1, 0, 0]
    assert props["start of word"].tolist() == [1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0]


def test_unit_correlations_find_the_planted_unit():
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list('ab "() \n'), size=600))
    props = text_properties(text)
    acts = rng.normal(size=(600, 8)).astype(np.float32)
    acts[:, 5] = props["inside quotes"] * 0.8 + rng.normal(scale=0.3, size=600)
    acts[:, 2] = -props["position in line"] / 10 + rng.normal(scale=0.5, size=600)
    acts[:, 7] = 0.25  # a dead unit: no correlation, not NaN
    acts[10] = np.nan  # an unscored character is left out
    found = unit_correlations(props, acts)
    keep = np.isfinite(acts).all(axis=1)
    unit, r = found["inside quotes"][0]
    assert unit == 5
    assert r == pytest.approx(np.corrcoef(acts[keep, 5], props["inside quotes"][keep])[0, 1])
    assert found["position in line"][0][0] == 2 and found["position in line"][0][1] < 0
    assert all(math.isfinite(r) for units in found.values() for _, r in units)
    assert 7 not in [u for u, _ in found["inside quotes"]]
    flat = text_properties("abc abc")
    assert unit_correlations(flat, rng.normal(size=(7, 8)))["inside quotes"] == []


# ---- mistakes --------------------------------------------------------------------------------


def test_missing_text_file_is_a_user_error(run, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        write_report(run, text_file=tmp_path / "nope.txt", out=tmp_path / "r.html")


def test_a_run_without_its_data_needs_text(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("data"))
    with pytest.raises(UserError, match="--text FILE"):
        write_report(copy)
    source = tmp_path / "p.txt"
    source.write_text("the quick brown fox\n", encoding="utf-8")
    page = write_report(copy, text_file=source).read_text(encoding="utf-8")
    assert "not found" in page and len(elements(page, "surprisal", cls="ch")) == 20


def test_a_run_without_metrics_still_reports(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "metrics.jsonl").unlink()
    page = write_report(copy).read_text(encoding="utf-8")
    assert "no metrics yet" in page and "data:image/png" not in page


# ---- in a browser ----------------------------------------------------------------------------


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if os.path.exists("/usr/bin/chromium"):
        return "/usr/bin/chromium"
    if os.environ.get("CI"):
        pytest.fail("CI is set but chromium is not installed (apt-get install chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium); the browser check needs it")


def run_chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=180)


def test_report_renders_in_chromium(run, report, tmp_path):
    browser = chromium()
    url = report.resolve().as_uri()
    dumped = run_chromium(browser, tmp_path / "profile", "--dump-dom", url)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = dumped.stdout
    for section in SECTIONS:
        assert f'id="{section}"' in dom
    passage = val_passage(run)
    assert len(elements(dom, "surprisal", cls="ch")) == len(passage)
    neurons = elements(dom, "neurons", cls="ch")
    assert len(neurons) == len(passage)
    # the script ran: every neuron span is shaded and titled with the selected unit's value
    assert all("rgba(" in s["attrs"].get("style", "") for s in neurons)
    assert all(s["attrs"].get("title", "").startswith("unit ") for s in neurons)
    assert len(elements(dom, "unit", "option")) == HIDDEN
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    taken = run_chromium(
        browser, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2000", url
    )
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
