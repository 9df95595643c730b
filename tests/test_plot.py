import io
import json
import math
import shutil
import struct
import subprocess
import sys
import zlib

import pytest

import nextchar
from nextchar.errors import UserError
from nextchar.plot import draw, load_curves, plot_runs, render_png, run_label
from nextchar.runfolder import RunFolder

LINE = 'He said "the quick (brown) fox" jumps over the lazy dog; naïve café.\n'
TEXT = "".join(f"{i}: {LINE}" for i in range(120))
TINY = dict(
    hidden=32,
    layers=1,
    embed=16,
    batch_size=4,
    seq_len=16,
    eval_every=10,
    sample_chars=20,
    log_every=5,
    quiet=True,
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("plot")
    first = nextchar.train(text=TEXT, out=root / "first", steps=40, **TINY).path
    second = nextchar.train(text=TEXT, out=root / "second", steps=20, cell="gru", **TINY).path
    return first, second


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature and its CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    body = data[16:29]
    (crc,) = struct.unpack(">I", data[29:33])
    assert zlib.crc32(b"IHDR" + body) == crc
    assert data.endswith(b"IEND\xaeB`\x82")
    return struct.unpack(">II", body[:8])


def records(run, kind):
    return [r for r in RunFolder(run).read_metrics() if r["kind"] == kind]


def test_curves_are_the_metrics_in_bits(runs):
    first, _ = runs
    curves = load_curves(first)
    train = records(first, "train")
    evals = records(first, "eval")
    assert len(train) == 8 and len(evals) == 4  # log every 5 steps, eval every 10 over 40 steps
    assert curves.train.bits == pytest.approx([r["loss"] / math.log(2) for r in train])
    assert curves.train.chars == [r["chars"] for r in train]
    assert curves.train.time == [r["time"] for r in train]
    assert curves.val.bits == pytest.approx([r["val_bpc"] for r in evals])
    assert curves.val.chars == [r["chars"] for r in evals]
    # the val curve is in the same unit as the train curve: bits = nats / ln 2
    assert curves.val.bits == pytest.approx([r["val_loss"] / math.log(2) for r in evals])


def test_labels_come_from_the_config(runs):
    first, second = runs
    assert run_label(first) == "lstm 1x32 (first)"
    assert run_label(second) == "gru 1x32 (second)"


def test_figure_overlays_runs_in_two_panels(runs):
    first, second = runs
    figure = draw([load_curves(first), load_curves(second)])
    by_chars, by_time = figure.axes
    assert by_chars.get_xlabel() == "characters seen"
    assert by_time.get_xlabel() == "wall time (s)"
    for axes in (by_chars, by_time):
        lines = {line.get_label(): line for line in axes.get_lines()}
        assert set(lines) == {
            "lstm 1x32 (first) train",
            "lstm 1x32 (first) val",
            "gru 1x32 (second) train",
            "gru 1x32 (second) val",
        }
        assert lines["lstm 1x32 (first) val"].get_marker() == "o"
        assert lines["lstm 1x32 (first) train"].get_marker() in ("None", "", None)
        assert (
            lines["lstm 1x32 (first) train"].get_linewidth()
            < lines["lstm 1x32 (first) val"].get_linewidth()
        )
        assert (
            lines["gru 1x32 (second) val"].get_color() != lines["lstm 1x32 (first) val"].get_color()
        )
    val = {line.get_label(): line for line in by_chars.get_lines()}["gru 1x32 (second) val"]
    assert list(val.get_xdata()) == [r["chars"] for r in records(second, "eval")]
    assert list(val.get_ydata()) == pytest.approx([r["val_bpc"] for r in records(second, "eval")])
    legend = [t.get_text() for t in by_time.get_legend().get_texts()]
    assert "gru 1x32 (second) val" in legend


def test_plot_runs_writes_a_png_into_the_first_run(runs):
    first, second = runs
    path = plot_runs([first, second])
    assert path == first / "curves.png"
    width, height = png_size(path.read_bytes())
    assert (width, height) == (1210, 462)  # 11 x 4.2 inches at 110 dpi
    assert not list(first.glob(".curves.png.tmp-*"))  # written atomically, nothing left behind


def test_plot_runs_to_a_chosen_file_with_labels(runs, tmp_path):
    first, second = runs
    out = plot_runs([first, second], out=tmp_path / "both.png", labels=["a", "b"])
    assert out == tmp_path / "both.png"
    png_size(out.read_bytes())
    with pytest.raises(UserError, match="1 label"):
        plot_runs([first, second], out=tmp_path / "x.png", labels=["only one"])
    with pytest.raises(UserError, match="does not exist"):
        plot_runs([first], out=tmp_path / "missing" / "x.png")


def test_png_is_the_rendered_figure(runs):
    from matplotlib.image import imread

    image = imread(io.BytesIO(render_png([runs[0]])), format="png")
    assert image.shape[:2] == (462, 1210)
    assert image[..., :3].std() > 0.05  # curves and text, not a blank canvas


def test_a_run_without_metrics_is_a_user_error(runs, tmp_path):
    empty = tmp_path / "fresh"
    empty.mkdir()
    for name in ("config.json", "vocab.json"):
        shutil.copy(runs[0] / name, empty / name)
    with pytest.raises(UserError, match="no metrics yet") as caught:
        plot_runs([empty])
    assert "\n" not in str(caught.value)
    # a metrics file with only a skipped step has no curve either
    (empty / "metrics.jsonl").write_text(json.dumps({"kind": "skipped", "step": 1}) + "\n")
    with pytest.raises(UserError, match="no metrics yet"):
        plot_runs([empty])
    assert not (empty / "curves.png").exists()


def test_not_a_run_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no run folder"):
        plot_runs([tmp_path / "nowhere"])


def test_matplotlib_is_imported_only_when_plotting():
    code = "import sys, nextchar.plot; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
