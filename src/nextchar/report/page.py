"""The report's HTML: page.html (a string.Template) filled with the run's summary, curves,
samples and the passage's spans, with page.css and page.js inlined, so that the page needs no
network. Characters are escaped, and invisible ones shown as marks, here."""

from __future__ import annotations

import base64
import datetime
import html
import math
import string
import unicodedata
from importlib import resources

import numpy as np

from ..metrics import EvalRecord, Record
from .analysis import PROPERTIES, TOP_K, Analysis, text_properties, unit_correlations

ACTIVATION_SCALE = 100  # activations are embedded as integers in hundredths


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
            attributes = (
                f' title="{html.escape(_shown(c))}{code} is not in the '
                f'model&#39;s vocabulary: not scored"'
            )
        elif surprisal and t == first_known:
            classes += " first"
            attributes = ' title="the first character: nothing before it to predict it from"'
        elif surprisal:
            b = float(analysis.bits[t])
            alpha = min(1.0, b / top_bits) * 0.85
            guesses = " · ".join(f"{html.escape(_shown(s))} {p:.1%}" for s, p in analysis.top[t])
            attributes = (
                f' style="background:rgba(230,85,13,{alpha:.3f})" data-bits="{b:.4f}" '
                f'title="{html.escape(_shown(c))}: {b:.2f} bits&#10;expected: {guesses}"'
            )
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


def _samples_html(metrics: list[Record]) -> str:
    evals = [r for r in metrics if isinstance(r, EvalRecord)]
    if not evals:
        return '<p class="note">No evaluations recorded yet.</p>'
    parts = []
    for r in evals:
        meta = [f"step {r.step:,}", f"{r.chars:,} chars seen"]
        if r.val_bpc is not None:
            meta.append(f"val {r.val_bpc:.3f} bits/char")
        sample = r.sample
        body = html.escape(sample) if sample else "(no sample)"
        parts.append(
            f'<div class="sample"><div class="meta">{" · ".join(meta)}</div><pre>{body}</pre></div>'
        )
    return f'<div class="samples">{"".join(parts)}</div>'


def _neuron_controls(
    analysis: Analysis, found: dict[str, list[tuple[int, float]]]
) -> tuple[str, str]:
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
            cell = "".join(
                f'<button type="button" class="unit" data-unit="{u}">unit {u} r = {r:+.2f}</button>'
                for u, r in units
            )
        else:
            cell = '<span class="note">not present in this passage</span>'
        rows.append(
            f'<tr><td title="{html.escape(PROPERTIES[name])}">{html.escape(name)}</td>'
            f"<td>{cell}</td></tr>"
        )
    return select, f'<table class="props" id="correlations">{"".join(rows)}</table>'


def render_html(
    *,
    name: str,
    summary: list[tuple[str, str]],
    curves_png: bytes | None,
    curves_note: str,
    metrics: list[Record],
    analysis: Analysis,
    passage_from: str,
    vocab_size: int,
    cell: str,
) -> str:
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
    mean_text = (
        f"{mean_bits:.3f} bits/char on average over {int(scored.sum()):,} scored characters"
        if scored.any()
        else "No character of it could be scored"
    )
    if unscored:
        mean_text += (
            f"; {unscored} not scored (the first character, and any outside the vocabulary)"
        )
    return _asset("page.html").substitute(
        name=html.escape(name),
        css=_asset_text("page.css"),
        js=_asset_text("page.js"),
        stamp=stamp,
        summary=_summary_html(summary),
        curves=curves,
        samples=_samples_html(metrics),
        passage_from=html.escape(passage_from[:1].upper() + passage_from[1:]),
        top_k=TOP_K,
        mean_text=html.escape(mean_text),
        top_bits=f"{top_bits:.1f}",
        vocab_size=vocab_size,
        surprisal_spans=_spans(analysis, True, top_bits),
        cell=html.escape(cell),
        correlations=correlations,
        select=select,
        range_low=f"{-value_range:.2g}",
        range_high=f"{value_range:+.2g}",
        neuron_spans=_spans(analysis, False, top_bits),
        activations=_activations_json(analysis, value_range),
    )


def _asset_text(name: str) -> str:
    """A file of the page (package data next to this module)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _asset(name: str) -> string.Template:
    return string.Template(_asset_text(name))
