"""Learning curves: train and val bits/char against characters seen and against wall time.

Reads each run's metrics.jsonl (its records are defined in runfolder.py): TrainRecords carry the
mean training loss in nats since the previous log line, EvalRecords the validation bits/char. Several runs are
overlaid, one colour each, labelled from their configs. matplotlib is imported only here, on
first use, and drawn with its Agg canvas (no display, no pyplot global state).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .evaluate import LN2
from .metrics import EvalRecord, TrainRecord
from .runfolder import METRICS, RunFolder, atomic_write


@dataclass
class Curve:
    """One series of points; `chars`, `time` (seconds) and `bits` (bits/char) are parallel."""

    chars: list[int] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    bits: list[float] = field(default_factory=list)

    def add(self, record: TrainRecord | EvalRecord, bits: float) -> None:
        if not math.isfinite(bits):
            return
        self.chars.append(record.chars)
        self.time.append(float(record.time))
        self.bits.append(bits)


@dataclass
class RunCurves:
    label: str
    train: Curve
    val: Curve


def run_label(run: str | os.PathLike) -> str:
    """'lstm 2x256 (name)' from the run's config and folder name."""
    folder = RunFolder(run)
    model = folder.read_config().model
    return f"{model.cell} {model.layers}x{model.hidden} ({folder.path.resolve().name})"


def load_curves(run: str | os.PathLike, label: str | None = None) -> RunCurves:
    """The run's train and val curves in bits/char. No metrics yet -> UserError."""
    folder = RunFolder(run)
    name = label if label is not None else run_label(folder.path)
    train, val = Curve(), Curve()
    for record in folder.read_records():
        if isinstance(record, TrainRecord):
            train.add(record, record.loss / LN2)
        elif isinstance(record, EvalRecord) and record.val_bpc is not None:
            val.add(record, record.val_bpc)
    if not train.bits and not val.bits:
        raise UserError(
            f"{folder.path} has no metrics yet ({METRICS} is missing or holds no train or "
            f"eval lines); train it until its first log step, then plot again"
        )
    return RunCurves(name, train, val)


def _time_unit(seconds: float) -> tuple[str, float]:
    if seconds >= 2 * 3600:
        return "h", 3600.0
    if seconds >= 2 * 60:
        return "min", 60.0
    return "s", 1.0


def draw(curves: list[RunCurves], dpi: int = 110):
    """A matplotlib Figure with two panels: bits/char vs characters seen, and vs wall time.
    Each run has one colour; its train curve is thin, its val curve has markers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    figure = Figure(figsize=(11.0, 4.2), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)  # Agg: rendering needs no display and leaves pyplot alone
    by_chars, by_time = figure.subplots(1, 2, sharey=True)
    longest = max(max(c.train.time + c.val.time) for c in curves)
    unit, scale = _time_unit(longest)
    for i, run in enumerate(curves):
        color = f"C{i % 10}"
        for axes, (train_x, val_x) in (
            (by_chars, (run.train.chars, run.val.chars)),
            (by_time, ([t / scale for t in run.train.time], [t / scale for t in run.val.time])),
        ):
            if run.train.bits:
                axes.plot(
                    train_x,
                    run.train.bits,
                    color=color,
                    linewidth=0.9,
                    alpha=0.55,
                    label=f"{run.label} train",
                )
            if run.val.bits:
                axes.plot(
                    val_x,
                    run.val.bits,
                    color=color,
                    linewidth=1.8,
                    marker="o",
                    markersize=4,
                    label=f"{run.label} val",
                )
    by_chars.set_xlabel("characters seen")
    by_chars.xaxis.set_major_formatter(EngFormatter(sep=""))
    by_chars.set_ylabel("bits per character")
    by_chars.set_title("vs characters seen", fontsize=11)
    by_time.set_xlabel(f"wall time ({unit})")
    by_time.set_title("vs wall time", fontsize=11)
    by_time.tick_params(labelleft=True)
    for axes in (by_chars, by_time):
        axes.grid(True, alpha=0.3)
        axes.set_xlim(left=0)
    by_time.legend(fontsize=8, loc="upper right", frameon=False)
    return figure


def render_png(runs: list[str | os.PathLike], labels: list[str] | None = None) -> bytes:
    """The figure for `runs` as PNG bytes (nothing is written)."""
    if not runs:
        raise UserError("give at least one run folder to plot")
    if labels is not None and len(labels) != len(runs):
        raise UserError(
            f"got {len(labels)} label(s) for {len(runs)} run(s); give one per run or none"
        )
    curves = [load_curves(run, labels[i] if labels else None) for i, run in enumerate(runs)]
    buffer = io.BytesIO()
    draw(curves).savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def plot_runs(
    runs: list[str | os.PathLike],
    out: str | os.PathLike | None = None,
    labels: list[str] | None = None,
) -> Path:
    """Write the learning curves of `runs` (overlaid) to `out` (default <first run>/curves.png)."""
    png = render_png(runs, labels)
    path = Path(out) if out is not None else RunFolder(runs[0]).file("curves.png")
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: the folder {path.parent} does not exist")
    atomic_write(path, png)
    return path
