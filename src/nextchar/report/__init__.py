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

This module gathers what the page shows (passage, summary) and writes it; analysis.py runs the
network over the passage; page.py fills page.html with page.css and page.js (package data).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..corpus import iter_chunks
from ..data import TokenData
from ..errors import UserError
from ..metrics import EvalRecord, FinalRecord, Record, TrainRecord
from ..model import CharRNN
from ..plot import render_png
from ..runfolder import DataChanged, RunFolder, atomic_write, load_model
from ..vocab import Vocab
from .analysis import Analysis, analyse, text_properties, unit_correlations
from .page import render_html

__all__ = [
    "Analysis",
    "analyse",
    "render_html",
    "text_properties",
    "unit_correlations",
    "write_report",
]


def _load_data(folder: RunFolder, config) -> TokenData | None:

    try:
        return folder.split_data(config)
    except DataChanged:
        raise
    except UserError:
        return None


def _passage(
    data: TokenData | None, folder: RunFolder, text_file, passage_chars: int
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
        raise UserError(
            f"cannot find the text {folder.path} trained on; give a passage to show "
            f"with --text FILE"
        )
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


def _summary(
    folder: RunFolder,
    module: CharRNN,
    vocab: Vocab,
    config,
    meta: dict,
    metrics: list[Record],
    data: TokenData | None,
) -> list[tuple[str, str]]:
    """(label, text) rows of the run summary."""
    command = folder.read_command()
    rows = [("command", command)] if command else []
    rows.append(("data", _data_text(data)))
    rows.append(("vocabulary", f"{len(vocab)} symbols"))
    rows.append(("model", _model_text(config.model)))
    t = config.train
    if t.average != "none":
        decay = f", decay {t.average_decay:g}" if t.average == "ema" else ""
        averaged = f"averaged ({t.average}{decay}) from {t.average_start:.0%} of the run"
        rows.append(("weights", averaged))
    rows.append(("parameters", f"{module.num_parameters():,}"))
    rows += _training_rows(metrics)
    if "step" in meta:
        which = "best" if meta.get("kind") == "weights" else "latest"
        rows.append(("weights shown", f"{which} checkpoint, step {int(meta['step']):,}"))
    return rows


def _data_text(data: TokenData | None) -> str:
    if data is None:
        return "not found (the prepared data folder is gone)"
    sources = "; ".join(
        f"{s.get('path', '?')} ({int(s.get('chars', 0)):,} chars)" for s in data.sources
    )
    sizes = ", ".join(f"{name} {hi - lo:,}" for name, (lo, hi) in data.splits.items())
    return f"{sources or '(not recorded)'}; splits: {sizes} chars"


def _model_text(m) -> str:
    layers = f"{m.cell}, {m.layers} layer{'s' if m.layers > 1 else ''} x {m.hidden} hidden"
    inputs = f"embedding {m.embed}" if m.embed else "one-hot input"
    regularisers = [
        f"{'locked ' if m.locked_dropout else ''}dropout {m.dropout:g}" if m.dropout else "",
        f"weight drop {m.weight_drop:g}" if m.weight_drop else "",
        f"embedding dropout {m.embed_drop:g}" if m.embed_drop else "",
    ]
    return ", ".join([layers, inputs, *filter(None, regularisers)])


def _training_rows(metrics: list[Record]) -> list[tuple[str, str]]:
    """How far the run got, its best validation score and its test score."""
    rows = []
    finals = [r for r in metrics if isinstance(r, FinalRecord)]
    final = finals[-1] if finals else None
    logged = [r for r in metrics if isinstance(r, (TrainRecord, EvalRecord, FinalRecord))]
    last = final or (max(logged, key=lambda r: r.step) if logged else None)
    if last is not None:
        status = "" if final else " (no final record: still training, or stopped early)"
        seen = f"{last.step:,} steps, {last.chars:,} characters seen"
        rows.append(("training", f"{seen}, {_duration(float(last.time))}{status}"))
    evals = [r for r in metrics if isinstance(r, EvalRecord) and r.val_bpc is not None]
    if final and final.val:
        val = final.val
        rows.append(
            ("best val", f"{val.bits_per_char:.4f} bits/char (accuracy {val.accuracy:.1%})")
        )
    elif evals:
        best = min(evals, key=lambda r: r.val_bpc)
        rows.append(("best val", f"{best.val_bpc:.4f} bits/char at step {best.step:,}"))
    if final and final.test:
        test = final.test
        scored = f"{test.bits_per_char:.4f} bits/char (accuracy {test.accuracy:.1%})"
        rows.append(("test", f"{scored} with the best weights"))
    return rows


def write_report(
    run: str | os.PathLike,
    text_file: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    passage_chars: int = 2000,
) -> Path:
    """Write the run's self-contained HTML report to `out` (default RUN/report.html)."""
    if passage_chars < 1:
        raise UserError(f"the passage needs at least one character, got {passage_chars}")
    folder = RunFolder(run)
    module, vocab, config, meta = load_model(folder.path)
    metrics = folder.read_records()
    data = _load_data(folder, config)
    text, passage_from = _passage(data, folder, text_file, passage_chars)
    try:
        curves_png, curves_note = render_png([folder.path]), ""
    except UserError as exc:
        curves_png, curves_note = None, str(exc)
    analysis = analyse(module, vocab, text)
    page = render_html(
        name=folder.path.resolve().name,
        summary=_summary(folder, module, vocab, config, meta, metrics, data),
        curves_png=curves_png,
        curves_note=curves_note,
        metrics=metrics,
        analysis=analysis,
        passage_from=passage_from,
        vocab_size=len(vocab),
        cell=config.model.cell,
    )
    path = Path(out) if out is not None else folder.file("report.html")
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: the folder {path.parent} does not exist")
    atomic_write(path, page)
    return path
