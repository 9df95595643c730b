"""The HTML report: one self-contained page that shows what a run's network learned.

    RUN/report.html
      run summary      data, vocab, model, parameters, training time, best val / test bits/char
      curves           plot.py's figure, embedded as a base64 PNG
      samples          the text sampled at each evaluation
      surprisal        a passage, each character shaded by the bits the model paid for it,
                       its top-5 predictions on hover
      neurons          the same passage shaded by one hidden unit of the top layer (h_t), a
                       <select> over units, and the units most correlated with simple properties
                       of the text (inside quotes, position in line, ...)

No network: images are data URIs, CSS and JS are inline. The passage is run through the model
once, under inference mode; the bits of character t come from the logits after t - 1, so the
first character and characters outside the vocabulary (which the model reads past, as
`Model.evaluate` does) are shown but not scored. docs/report.md explains how to read the page.
"""

from __future__ import annotations

import base64
import datetime
import html
import math
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .corpus import iter_chunks
from .data import TokenData
from .errors import UserError
from .model import CharRNN
from .plot import render_png
from .runfolder import COMMAND, DataChanged, RunFolder, atomic_write, load_model
from .vocab import Vocab, code_points

LN2 = math.log(2.0)
TOP_K = 5
UNITS_PER_PROPERTY = 3
ACTIVATION_SCALE = 100  # activations are embedded as integers in hundredths


@dataclass
class Analysis:
    """One forward pass over a passage of N characters; H = hidden units of the top layer."""

    text: str
    known: np.ndarray  # (N,) bool: in the vocabulary
    bits: np.ndarray  # (N,) bits the model paid for each character; NaN where unscored
    top: list[list[tuple[str, float]]]  # per character: the top-k predictions for it, or []
    activations: np.ndarray  # (N, H) top-layer h_t after each character; NaN rows where unknown

    @property
    def scored(self) -> np.ndarray:
        return np.isfinite(self.bits)


def analyse(module: CharRNN, vocab: Vocab, text: str, top_k: int = TOP_K) -> Analysis:
    """Bits, top-k predictions and top-layer activations for every character of `text`."""
    ids = vocab.ids_of_points(code_points(text))  # (N,), -1 outside the vocabulary
    known = ids >= 0
    where = np.flatnonzero(known)  # (K,) positions the model reads
    N, H = len(ids), module.config.hidden
    bits = np.full(N, np.nan)
    activations = np.full((N, H), np.nan, dtype=np.float32)
    top: list[list[tuple[str, float]]] = [[] for _ in range(N)]
    if len(where) == 0:
        return Analysis(text, known, bits, top, activations)
    device = module.head.weight.device
    idx = torch.from_numpy(ids[where]).to(device)[None]  # (1, K)
    captured = []
    hook = module.rnn.register_forward_hook(lambda _m, _inputs, output: captured.append(output[0]))
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            logits, _ = module(idx)  # (1, K, V)
            logp = F.log_softmax(logits[0, :-1].float(), dim=-1)  # (K-1, V): predicts idx[1:]
            paid = -logp.gather(1, idx[0, 1:, None]).squeeze(1) / LN2  # (K-1,)
            probs, best = logp.exp().topk(min(top_k, logp.size(-1)), dim=-1)  # (K-1, k)
            hidden = captured[0][0].float()  # (K, H)
    finally:
        hook.remove()
        module.train(was_training)
    bits[where[1:]] = paid.cpu().double().numpy()
    activations[where] = hidden.cpu().numpy()
    symbols = vocab.symbols
    for position, ps, cs in zip(where[1:].tolist(), probs.tolist(), best.tolist()):
        top[position] = [(symbols[c], p) for c, p in zip(cs, ps)]
    return Analysis(text, known, bits, top, activations)


# ---- simple properties of the text, and the units that track them ---------------------------

PROPERTIES = {
    "inside quotes": "between an opening and a closing double quote",
    "position in line": "characters since the last newline",
    "after a newline": "the character just read is a newline",
    "start of word": "the character just read begins a word",
    "inside parentheses": "between ( and )",
}


def text_properties(text: str) -> dict[str, np.ndarray]:
    """Per character (N,): each of PROPERTIES as known after reading it (no look-ahead)."""
    N = len(text)
    values = {name: np.zeros(N) for name in PROPERTIES}
    quoted, depth, column, previous = False, 0, 0, ""
    for t, c in enumerate(text):
        if c == '"':
            quoted = not quoted
        elif c in "“”":
            quoted = c == "“"
        if c == "(":
            depth += 1
        elif c == ")":
            depth = max(0, depth - 1)
        values["inside quotes"][t] = quoted
        values["position in line"][t] = column
        values["after a newline"][t] = c == "\n"
        values["start of word"][t] = c.isalnum() and not previous.isalnum()
        values["inside parentheses"][t] = depth > 0
        column = 0 if c == "\n" else column + 1
        previous = c
    return values


def unit_correlations(properties: dict[str, np.ndarray], activations: np.ndarray,
                      per_property: int = UNITS_PER_PROPERTY) -> dict[str, list[tuple[int, float]]]:
    """Per property: the `per_property` units with the largest |Pearson r| over the characters
    with activations, as (unit, r). A property constant over the passage gets []."""
    rows = np.isfinite(activations).all(axis=1)  # (N,)
    A = activations[rows].astype(np.float64)  # (n, H)
    A = A - A.mean(axis=0)
    a_norm = np.sqrt((A * A).sum(axis=0))  # (H,)
    found = {}
    for name, values in properties.items():
        if rows.sum() < 3:
            found[name] = []
            continue
        p = values[rows] - values[rows].mean()  # (n,)
        p_norm = math.sqrt(float(p @ p))
        if p_norm == 0:
            found[name] = []
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(a_norm > 0, (A.T @ p) / (a_norm * p_norm), 0.0)  # (H,)
        order = np.argsort(-np.abs(r), kind="stable")[:per_property]
        found[name] = [(int(u), float(r[u])) for u in order]
    return found


# ---- gathering what the page shows -----------------------------------------------------------

def _load_data(folder: RunFolder, config) -> TokenData | None:

    try:
        data = folder.training_data()
    except DataChanged:
        raise
    except UserError:
        return None
    return data.resplit(config.data.val_frac, config.data.test_frac)


def _passage(data: TokenData | None, folder: RunFolder, text_file, passage_chars: int
             ) -> tuple[str, str]:
    """The passage and a phrase saying where it came from."""
    if text_file is not None:
        path = Path(text_file)
        if not path.is_file():
            raise UserError(f"--text {path} does not exist or is not a file")
        pieces, length = [], 0
        for chunk in iter_chunks(path):  # decoded exactly as `nextchar eval` decodes its TEXT
            pieces.append(chunk)
            length += len(chunk)
            if length >= passage_chars:
                break
        text = "".join(pieces)[:passage_chars]
        if not text:
            raise UserError(f"--text {path} is empty; give a file with some text to show")
        return text, f"the first {len(text):,} characters of {path}"
    if data is None:
        raise UserError(f"cannot find the text {folder.path} trained on; give a passage to show "
                        f"with --text FILE")
    for split in ("val", "test", "train"):
        lo, hi = data.splits[split]
        if hi - lo >= 2:
            text = data.text(split, passage_chars)
            return text, f"the first {len(text):,} characters of the run's {split} split"
    raise UserError("the run's data is too short to show; give a passage with --text FILE")


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _summary(folder: RunFolder, module: CharRNN, vocab: Vocab, config, meta: dict,
             metrics: list[dict], data: TokenData | None) -> list[tuple[str, str]]:
    """(label, text) rows of the run summary."""
    rows = []
    try:
        command = folder.file(COMMAND).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        command = ""
    if command:
        rows.append(("command", command))
    if data is not None:
        sources = "; ".join(f"{s.get('path', '?')} ({int(s.get('chars', 0)):,} chars)"
                            for s in data.sources) or "(not recorded)"
        sizes = ", ".join(f"{name} {hi - lo:,}" for name, (lo, hi) in data.splits.items())
        rows.append(("data", f"{sources}; splits: {sizes} chars"))
    else:
        rows.append(("data", "not found (the prepared data folder is gone)"))
    rows.append(("vocabulary", f"{len(vocab)} symbols"))
    m = config.model
    inputs = f"embedding {m.embed}" if m.embed else "one-hot input"
    regularisers = [f"{'locked ' if m.locked_dropout else ''}dropout {m.dropout:g}" if m.dropout else "",
                    f"weight drop {m.weight_drop:g}" if m.weight_drop else "",
                    f"embedding dropout {m.embed_drop:g}" if m.embed_drop else ""]
    rows.append(("model", ", ".join([f"{m.cell}, {m.layers} layer{'s' if m.layers > 1 else ''} x "
                                     f"{m.hidden} hidden", inputs, *filter(None, regularisers)])))
    t = config.train
    if t.average != "none":
        decay = f", decay {t.average_decay:g}" if t.average == "ema" else ""
        rows.append(("weights", f"averaged ({t.average}{decay}) from {t.average_start:.0%} of the run"))
    rows.append(("parameters", f"{module.num_parameters():,}"))
    finals = [r for r in metrics if r.get("kind") == "final"]
    final = finals[-1] if finals else None
    logged = [r for r in metrics if r.get("kind") in ("train", "eval", "final")]
    last = final or (max(logged, key=lambda r: r.get("step", 0)) if logged else None)
    if last is not None:
        status = "" if final else " (no final record: still training, or stopped early)"
        rows.append(("training", f"{int(last.get('step', 0)):,} steps, "
                                 f"{int(last.get('chars', 0)):,} characters seen, "
                                 f"{_duration(float(last.get('time', 0.0)))}{status}"))
    evals = [r for r in metrics if r.get("kind") == "eval" and isinstance(r.get("val_bpc"), (int, float))]
    if final and final.get("val"):
        rows.append(("best val", f"{final['val']['bits_per_char']:.4f} bits/char "
                                  f"(accuracy {final['val']['accuracy']:.1%})"))
    elif evals:
        best = min(evals, key=lambda r: r["val_bpc"])
        rows.append(("best val", f"{best['val_bpc']:.4f} bits/char at step {best['step']:,}"))
    if final and final.get("test"):
        rows.append(("test", f"{final['test']['bits_per_char']:.4f} bits/char "
                             f"(accuracy {final['test']['accuracy']:.1%}) with the best weights"))
    if "step" in meta:
        rows.append(("weights shown", f"{'best' if meta.get('kind') == 'weights' else 'latest'} "
                                      f"checkpoint, step {int(meta['step']):,}"))
    return rows


# ---- HTML --------------------------------------------------------------------------------------

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#222;
  background:#fff;max-width:1100px;margin:1.5em auto;padding:0 1.2em}
h1{font-size:1.55em;margin:0 0 .1em} h1 .name{color:#555;font-weight:normal}
h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin:1.8em 0 .6em}
.note{color:#666;font-size:.92em;margin:.3em 0 .7em}
table.summary{border-collapse:collapse} table.summary td{padding:.15em 1.2em .15em 0;vertical-align:top}
table.summary td:first-child{color:#666;white-space:nowrap}
table.summary td.mono{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:.9em}
img.curves{max-width:100%;height:auto}
.samples{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:.1em 1.2em}
.sample{margin:0 0 .7em;min-width:0} .sample .meta{color:#555;font-size:.9em}
.sample pre{max-height:12.7em;overflow-y:auto}
pre{white-space:pre-wrap;word-wrap:break-word;background:#f6f6f4;border-radius:4px;margin:.15em 0 0;
  padding:.5em .8em;font:13px/1.4 ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace}
.passage{font:14px/1.75 ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;white-space:pre-wrap;
  word-wrap:break-word;border:1px solid #ddd;border-radius:4px;padding:.7em .9em;max-height:36em;
  overflow-y:auto}
.ch{border-radius:2px} .ch.nl{color:#aaa} .ch.first{color:#888}
.ch.unk{color:#999;outline:1px dashed #bbb;outline-offset:-1px}
.ch.ctl{font-size:70%;color:#555;border:1px solid #aaa;border-radius:2px;padding:0 1px}
.legend{display:flex;align-items:center;gap:.6em;font-size:.9em;color:#555;margin:.4em 0 .7em}
.bar{display:inline-block;width:220px;height:12px;border:1px solid #ccc;border-radius:2px}
.bar.bits{background:linear-gradient(to right,rgba(230,85,13,0),rgba(230,85,13,.85))}
.bar.act{background:linear-gradient(to right,rgba(31,119,180,.85),rgba(31,119,180,0) 50%,
  rgba(214,39,40,0) 50%,rgba(214,39,40,.85))}
.controls{display:flex;align-items:center;gap:1em;margin:.4em 0 .7em}
select{font:inherit;padding:.1em .3em}
table.props{border-collapse:collapse;margin:.3em 0 .8em;font-size:.93em}
table.props td{padding:.15em 1em .15em 0;vertical-align:top} table.props td:first-child{white-space:nowrap}
button.unit{font:inherit;font-size:.92em;border:1px solid #ccc;background:#f7f7f7;border-radius:3px;
  padding:0 .45em;margin:0 .35em .2em 0;cursor:pointer}
button.unit:hover,button.unit.on{background:#e6eefb;border-color:#7a9fd6}
""".strip()

JS = """
(function () {
  var data = JSON.parse(document.getElementById("activations").textContent);
  var select = document.getElementById("unit");
  var spans = document.querySelectorAll("#neurons .ch");
  var buttons = document.querySelectorAll("button.unit");
  function shade(unit) {
    var values = data.units[unit];
    for (var i = 0; i < spans.length; i++) {
      var v = values[i];
      if (v === null) { spans[i].style.background = ""; continue; }
      var a = Math.min(1, Math.abs(v) / data.scale / data.range) * 0.8;
      spans[i].style.background = (v >= 0 ? "rgba(214,39,40," : "rgba(31,119,180,") + a.toFixed(3) + ")";
      spans[i].title = "unit " + unit + ": " + (v / data.scale).toFixed(2);
    }
    for (var j = 0; j < buttons.length; j++) {
      buttons[j].classList.toggle("on", buttons[j].getAttribute("data-unit") === String(unit));
    }
  }
  select.addEventListener("change", function () { shade(Number(select.value)); });
  for (var k = 0; k < buttons.length; k++) {
    buttons[k].addEventListener("click", function (event) {
      var unit = event.currentTarget.getAttribute("data-unit");
      select.value = unit;
      shade(Number(unit));
    });
  }
  shade(Number(select.value));
})();
""".strip()

_VISIBLE = {"\n": "↵", " ": "␣", "\t": "⇥", "\r": "␍"}


_INVISIBLE = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}  # controls, format (bidi, zero-width), ...


def _invisible(c: str) -> bool:
    """Whether `c` shows nothing, or changes how its neighbours show, when printed as it is:
    C0/C1 controls, bidirectional and zero-width format characters (U+202E, U+200B, U+FEFF),
    line and paragraph separators, surrogates, private-use and unassigned code points."""
    return c not in _VISIBLE and unicodedata.category(c) in _INVISIBLE


def _shown(c: str) -> str:
    """A character as text a reader can see: whitespace and C0 controls as their Unicode
    pictures, every other invisible character (see _invisible) as its code point, U+XXXX."""
    if c in _VISIBLE:
        return _VISIBLE[c]
    if ord(c) < 32:
        return chr(0x2400 + ord(c))
    if c == "\x7f":
        return "␡"
    return f"U+{ord(c):04X}" if _invisible(c) else c


def _glyph(c: str) -> str:
    """The escaped content of a character's span in a passage (spaces and tabs stay as they are)."""
    if c in (" ", "\t"):
        return c
    return html.escape(_shown(c))


def _spans(analysis: Analysis, surprisal: bool, top_bits: float) -> str:
    """One <span class="ch"> per character; a newline also ends the line with a <br>."""
    parts = []
    first_known = int(np.argmax(analysis.known)) if analysis.known.any() else -1
    for t, c in enumerate(analysis.text):
        classes = "ch nl" if c == "\n" else ("ch ctl" if _invisible(c) else "ch")
        attributes = ""
        if not analysis.known[t]:
            classes += " unk"
            code = "" if _invisible(c) else f" (U+{ord(c):04X})"  # already shown as U+XXXX
            attributes = (f' title="{html.escape(_shown(c))}{code} is not in the '
                          f'model&#39;s vocabulary: not scored"')
        elif surprisal and t == first_known:
            classes += " first"
            attributes = ' title="the first character: nothing before it to predict it from"'
        elif surprisal:
            b = float(analysis.bits[t])
            alpha = min(1.0, b / top_bits) * 0.85
            guesses = " · ".join(f"{html.escape(_shown(s))} {p:.1%}" for s, p in analysis.top[t])
            attributes = (f' style="background:rgba(230,85,13,{alpha:.3f})" data-bits="{b:.4f}" '
                          f'title="{html.escape(_shown(c))}: {b:.2f} bits&#10;expected: {guesses}"')
        parts.append(f'<span class="{classes}"{attributes}>{_glyph(c)}</span>')
        if c == "\n":
            parts.append("<br>")
    return "".join(parts)


def _activations_json(analysis: Analysis, value_range: float) -> str:
    """{"scale", "range", "units": per unit, per character, round(100 a) or null}."""
    quantized = np.rint(np.nan_to_num(analysis.activations.T, nan=0.0) * ACTIVATION_SCALE)
    quantized = quantized.astype(np.int32)  # (H, N)
    unknown = np.flatnonzero(~analysis.known).tolist()
    units = []
    for row in quantized.tolist():
        cells = [str(v) for v in row]
        for t in unknown:
            cells[t] = "null"
        units.append("[" + ",".join(cells) + "]")
    body = f'{{"scale":{ACTIVATION_SCALE},"range":{value_range:.4g},"units":[{",".join(units)}]}}'
    return body.replace("<", "\\u003c")


def _summary_html(rows: list[tuple[str, str]]) -> str:
    cells = []
    for label, text in rows:
        mono = ' class="mono"' if label in ("command", "data") else ""
        cells.append(f"<tr><td>{html.escape(label)}</td><td{mono}>{html.escape(text)}</td></tr>")
    return f'<table class="summary">{"".join(cells)}</table>'


def _samples_html(metrics: list[dict]) -> str:
    evals = [r for r in metrics if r.get("kind") == "eval"]
    if not evals:
        return '<p class="note">No evaluations recorded yet.</p>'
    parts = []
    for r in evals:
        meta = [f"step {int(r.get('step', 0)):,}", f"{int(r.get('chars', 0)):,} chars seen"]
        if isinstance(r.get("val_bpc"), (int, float)):
            meta.append(f"val {r['val_bpc']:.3f} bits/char")
        sample = r.get("sample") or ""
        body = html.escape(sample) if sample else "(no sample)"
        parts.append(f'<div class="sample"><div class="meta">{" · ".join(meta)}</div>'
                     f"<pre>{body}</pre></div>")
    return f'<div class="samples">{"".join(parts)}</div>'


def _neuron_controls(analysis: Analysis, found: dict[str, list[tuple[int, float]]]) -> tuple[str, str]:
    """(the <select> with one option per unit, the table of correlated units)."""
    H = analysis.activations.shape[1]
    notes: dict[int, str] = {}
    best_unit, best_r = 0, -1.0
    for name, units in found.items():
        for unit, r in units:
            notes.setdefault(unit, f"{name}, r = {r:+.2f}")
            if abs(r) > best_r:
                best_unit, best_r = unit, abs(r)
    options = []
    for unit in range(H):
        label = f"unit {unit}" + (f" ({notes[unit]})" if unit in notes else "")
        selected = " selected" if unit == best_unit else ""
        options.append(f'<option value="{unit}"{selected}>{html.escape(label)}</option>')
    select = f'<select id="unit">{"".join(options)}</select>'
    rows = []
    for name, units in found.items():
        if units:
            cell = "".join(f'<button type="button" class="unit" data-unit="{u}">unit {u} '
                           f"r = {r:+.2f}</button>" for u, r in units)
        else:
            cell = '<span class="note">not present in this passage</span>'
        rows.append(f'<tr><td title="{html.escape(PROPERTIES[name])}">{html.escape(name)}</td>'
                    f"<td>{cell}</td></tr>")
    return select, f'<table class="props" id="correlations">{"".join(rows)}</table>'


def render_html(*, name: str, summary: list[tuple[str, str]], curves_png: bytes | None,
                curves_note: str, metrics: list[dict], analysis: Analysis, passage_from: str,
                vocab_size: int, cell: str) -> str:
    """The whole page as one string."""
    top_bits = max(1.0, math.log2(vocab_size))
    scored = analysis.scored
    mean_bits = float(analysis.bits[scored].mean()) if scored.any() else float("nan")
    unscored = len(analysis.text) - int(scored.sum())
    value_range = 1.0
    if cell == "rnn-relu":  # unbounded activations: shade relative to the largest
        finite = analysis.activations[np.isfinite(analysis.activations)]
        value_range = max(1e-6, float(np.abs(finite).max())) if finite.size else 1.0
    found = unit_correlations(text_properties(analysis.text), analysis.activations)
    select, correlations = _neuron_controls(analysis, found)
    if curves_png is not None:
        encoded = base64.b64encode(curves_png).decode("ascii")
        curves = f'<img class="curves" alt="learning curves" src="data:image/png;base64,{encoded}">'
    else:
        curves = f'<p class="note">{html.escape(curves_note)}</p>'
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    mean_text = (f"{mean_bits:.3f} bits/char on average over {int(scored.sum()):,} scored characters"
                 if scored.any() else "No character of it could be scored")
    if unscored:
        mean_text += f"; {unscored} not scored (the first character, and any outside the vocabulary)"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>nextchar report: {html.escape(name)}</title>
<style>
{CSS}
</style>
</head>
<body>
<h1>nextchar report <span class="name">{html.escape(name)}</span></h1>
<p class="note">Generated {stamp}. How to read this page: docs/report.md in the nextchar repository.</p>

<section id="summary">
<h2>Run</h2>
{_summary_html(summary)}
</section>

<section id="curves">
<h2>Learning curves</h2>
<p class="note">Bits per character (lower is better): training loss (thin) and validation
(markers), against characters seen and against wall time.</p>
{curves}
</section>

<section id="samples">
<h2>Samples during training</h2>
<p class="note">Text the model generated (temperature 0.8) at each evaluation.</p>
{_samples_html(metrics)}
</section>

<section id="surprisal-view">
<h2>Surprisal</h2>
<p class="note">{html.escape(passage_from[:1].upper() + passage_from[1:])}, each character shaded by the bits
the model paid for it given everything before it. Hover a character for its bits and the model's
top {TOP_K} guesses. {html.escape(mean_text)}.</p>
<div class="legend">0 bits <span class="bar bits"></span> {top_bits:.1f} bits or more
(a uniform guess over {vocab_size} symbols)</div>
<div class="passage" id="surprisal">{_spans(analysis, True, top_bits)}</div>
</section>

<section id="neuron-view">
<h2>Neurons</h2>
<p class="note">The same passage shaded by one hidden unit of the top {html.escape(cell)} layer
(h<sub>t</sub> after reading each character): blue negative, red positive. The units below are
the ones whose activation correlates most (Pearson r over the passage) with a simple property of
the text; click one to show it.</p>
{correlations}
<div class="controls"><label>Hidden unit {select}</label>
<span class="legend">{-value_range:.2g} <span class="bar act"></span> {value_range:+.2g}</span></div>
<div class="passage" id="neurons">{_spans(analysis, False, top_bits)}</div>
</section>

<script type="application/json" id="activations">{_activations_json(analysis, value_range)}</script>
<script>
{JS}
</script>
</body>
</html>
"""


def write_report(run: str | os.PathLike, text_file: str | os.PathLike | None = None,
                 out: str | os.PathLike | None = None, passage_chars: int = 2000) -> Path:
    """Write the run's self-contained HTML report to `out` (default RUN/report.html)."""
    if passage_chars < 1:
        raise UserError(f"the passage needs at least one character, got {passage_chars}")
    folder = RunFolder(run)
    module, vocab, config, meta = load_model(folder.path)
    metrics = folder.read_metrics()
    data = _load_data(folder, config)
    text, passage_from = _passage(data, folder, text_file, passage_chars)
    try:
        curves_png, curves_note = render_png([folder.path]), ""
    except UserError as exc:
        curves_png, curves_note = None, str(exc)
    analysis = analyse(module, vocab, text)
    page = render_html(name=folder.path.resolve().name,
                       summary=_summary(folder, module, vocab, config, meta, metrics, data),
                       curves_png=curves_png, curves_note=curves_note, metrics=metrics,
                       analysis=analysis, passage_from=passage_from, vocab_size=len(vocab),
                       cell=config.model.cell)
    path = Path(out) if out is not None else folder.file("report.html")
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: the folder {path.parent} does not exist")
    atomic_write(path, page)
    return path
