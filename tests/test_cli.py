"""The real CLI, end to end, on small data."""

import json
import subprocess
import sys
import time

import pytest

TINY_FLAGS = [
    "--hidden",
    "32",
    "--layers",
    "1",
    "--embed",
    "16",
    "--batch-size",
    "4",
    "--seq-len",
    "16",
    "--lr",
    "0.01",
    "--sample-chars",
    "20",
    "--warmup-steps",
    "5",
]


def nextchar(*args, check=True, timeout=120):
    proc = subprocess.run(
        [sys.executable, "-m", "nextchar", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    text = folder / "input.txt"
    text.write_text(
        "".join(f"line {i}: to be or not to be, that is the question.\n" for i in range(120))
    )
    run = folder / "run"
    proc = nextchar(
        "train", text, "--out", run, "--steps", 40, "--eval-every", 20, "--json", *TINY_FLAGS
    )
    return run, text, json.loads(proc.stdout)


@pytest.mark.slow
def test_train_json_result(trained_run):
    run, _, result = trained_run
    assert result["steps"] == 40 and result["stop"] == "steps"
    assert 0 < result["val"]["bits_per_char"] < 6 and result["test"]["chars"] > 0
    assert (run / "command.txt").read_text().startswith("nextchar train")


@pytest.mark.slow
def test_eval_split_and_text(trained_run):
    run, text, result = trained_run
    val = json.loads(nextchar("eval", run, "--json").stdout)
    assert val["bits_per_char"] == pytest.approx(result["val"]["bits_per_char"], rel=1e-6)
    test = json.loads(nextchar("eval", run, "--split", "test", "--json").stdout)
    assert test["bits_per_char"] == pytest.approx(result["test"]["bits_per_char"], rel=1e-6)
    other = text.parent / "other.txt"
    other.write_text("to be or not to be? 😀 Zzz\n")
    scored = json.loads(nextchar("eval", run, other, "--json").stdout)
    assert scored["unknown_chars"] >= 3 and "😀" in scored["unknown_symbols"]
    human = nextchar("eval", run, other).stdout
    assert "bits/char" in human and "not scored" in human


@pytest.mark.slow
def test_sample_streams_and_repeats(trained_run):
    run, _, _ = trained_run
    a = nextchar("sample", run, "--prime", "to be", "--length", 50, "--seed", 3).stdout
    b = nextchar("sample", run, "--prime", "to be", "--length", 50, "--seed", 3).stdout
    assert a == b and a.startswith("to be") and len(a.rstrip("\n")) == 55
    many = json.loads(
        nextchar(
            "sample",
            run,
            "--num-samples",
            3,
            "--length",
            20,
            "--json",
            "--temperature",
            0.7,
            "--top-k",
            5,
            "--top-p",
            0.9,
        ).stdout
    )
    assert len(many["samples"]) == 3
    greedy = nextchar("sample", run, "--greedy", "--length", 30, "--prime", "line").stdout
    assert greedy == nextchar("sample", run, "--greedy", "--length", 30, "--prime", "line").stdout


@pytest.mark.slow
def test_sample_precision_still_names_the_weight_format(trained_run):
    """--precision was sample's name for --weights: it still works, and says so in one line."""
    run, _, _ = trained_run
    new = nextchar("sample", run, "--length", 30, "--seed", 2, "--weights", "fp32")
    old = nextchar("sample", run, "--length", 30, "--seed", 2, "--precision", "fp32")
    assert old.stdout == new.stdout and new.stderr == ""
    assert (
        old.stderr == "nextchar sample: --precision is deprecated here; it is now --weights fp32\n"
    )


@pytest.mark.slow
def test_unknown_prime_is_a_one_line_error(trained_run):
    run, _, _ = trained_run
    proc = nextchar("sample", run, "--prime", "to be 😀", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "😀" in proc.stderr
    proc = nextchar("sample", run, "--prime", "to be 😀", "--unknown", "skip", "--length", 5)
    assert proc.stdout.startswith("to be ")


@pytest.mark.slow
def test_prepare_then_train_on_prepared(tmp_path, trained_run):
    _, text, _ = trained_run
    data = tmp_path / "data"
    nextchar("prepare", text, "--out", data)
    assert (data / "tokens.bin").stat().st_size == len(text.read_text())
    run = tmp_path / "run"
    nextchar("train", data, "--out", run, "--steps", 5, "--quiet", *TINY_FLAGS)
    assert json.loads((run / "source.json").read_text())["data"] == str(data.resolve())
    assert not (run / "data").exists()
    nextchar("train", "--resume", run, "--steps", 10, "--quiet")
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 10


def test_help_is_fast():
    started = time.perf_counter()
    proc = nextchar("--help")
    assert "train" in proc.stdout
    # only a hang or a heavy import fails this on a loaded machine; the floor (0.5 s) is measured
    # in bench/startup_memory.py, and the import check below is the exact one
    assert time.perf_counter() - started < 30
    assert (
        "torch"
        not in subprocess.run(
            [sys.executable, "-c", "import sys, nextchar.cli; print(sorted(sys.modules))"],
            capture_output=True,
            text=True,
        ).stdout
    )


@pytest.mark.slow
def test_hihello_cli():
    lines = nextchar("hihello").stdout.splitlines()
    assert len(lines) == 15 and lines[-1].startswith("predicted string: ihello\t epoch: 15, loss: ")
    records = [
        json.loads(line)
        for line in nextchar("hihello", "--feed", "sequence", "--json").stdout.splitlines()
    ]
    assert [r["epoch"] for r in records] == list(range(1, 16)) and records[-1][
        "predicted"
    ] == "ihello"
    assert records[-1]["loss"] < records[0]["loss"]


@pytest.mark.parametrize(
    "args",
    [
        ["hihello", "--epochs", "0"],
        ["hihello", "--lr", "-1"],
        ["hihello", "--text", "a"],
        ["hihello", "--bogus"],
        ["train", "--time", "soon"],
    ],
)
def test_usage_errors_are_one_line_exit_2(args):
    proc = nextchar(*args, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_plot_and_report_commands(trained_run, tmp_path):
    run, _, _ = trained_run
    png = tmp_path / "curves.png"
    proc = nextchar("plot", run, run, "--labels", "first", "second", "--out", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "wrote" in proc.stderr
    html = tmp_path / "report.html"
    nextchar("report", run, "--out", html, "--chars", 300)
    page = html.read_text()
    assert 'id="surprisal"' in page and "https://" not in page
    proc = nextchar("plot", tmp_path / "nothing-here", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_one_version_source(capsys):
    """`--version` and the package metadata both read nextchar.__version__; no copy elsewhere."""
    import re
    from pathlib import Path

    import nextchar
    from nextchar.cli import main

    with pytest.raises(SystemExit) as ended:
        main(["--version"])
    assert ended.value.code == 0 and capsys.readouterr().out == f"nextchar {nextchar.__version__}\n"
    project = (Path(__file__).parent.parent / "pyproject.toml").read_text()  # (no tomllib in 3.10)
    assert not re.search(r'^version\s*=\s*"', project, re.MULTILINE)
    assert re.search(r'^dynamic = \["version"\]', project, re.MULTILINE)
    assert re.search(r'^version = \{ attr = "nextchar.__version__" \}', project, re.MULTILINE)
