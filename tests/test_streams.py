"""The CLI's standard streams as a process sees them: closed, in other encodings, full, cut short
by Ctrl-C; a seed that fixes each sample; what the end of `train` suggests; the report's passage
decoded as `eval` decodes it. Each runs the real CLI as a subprocess."""

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nextchar.output import SampleWriter
from processes import TINY_TRAIN_FLAGS, wait_until

WORDS = ["héllo", "wörld", "日本", "naïve", "καλή", "ab", "cd"]


def nextchar(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kwargs}
    return subprocess.run(
        [sys.executable, "-m", "nextchar", *map(str, args)],
        text=True,
        encoding="utf-8",
        env={**os.environ, **(env or {})},
        **streams,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny run on text that is mostly not ASCII, starting with a Greek word."""
    folder = tmp_path_factory.mktemp("streams")
    text = folder / "t.txt"
    text.write_text(
        "καλή " + " ".join(WORDS[i % len(WORDS)] for i in range(3000)) + "\n", encoding="utf-8"
    )
    done = nextchar("train", text, "--out", folder / "run", *TINY_TRAIN_FLAGS, "--steps", "20")
    assert done.returncode == 0, done.stderr
    return folder / "run"


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.slow
def test_closed_stdout_refused_before_any_work(run):
    closed = nextchar("sample", run, "--length", "10", stdout=None, preexec_fn=lambda: os.close(1))
    assert closed.returncode == 2
    assert "standard output is closed" in one_error_line(closed.stderr)
    evaluated = nextchar("eval", run, stdout=None, preexec_fn=lambda: os.close(1))
    assert evaluated.returncode == 2 and "standard output is closed" in evaluated.stderr


def test_closed_stderr_still_samples(run):
    done = nextchar(
        "sample", run, "--length", "10", "--seed", "1", stderr=None, preexec_fn=lambda: os.close(2)
    )
    assert done.returncode == 0 and len(done.stdout) > 10


@pytest.mark.slow
def test_ascii_stdout_gets_escapes_and_one_note(run):
    """Characters the encoding cannot show are escaped, never dropped, never a traceback."""
    plain = nextchar("sample", run, "--length", "200", "--seed", "4", "--num-samples", "2")
    ascii_ = nextchar(
        "sample",
        run,
        "--length",
        "200",
        "--seed",
        "4",
        "--num-samples",
        "2",
        env={"PYTHONIOENCODING": "ascii"},
    )
    assert ascii_.returncode == 0, ascii_.stderr
    assert ascii_.stdout.isascii()
    unescaped = ascii_.stdout.encode("ascii").decode("unicode_escape")
    assert unescaped == plain.stdout
    assert "written as \\uXXXX escapes" in one_error_line(ascii_.stderr)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("mode", [[], ["--json"], ["--num-samples", "3"]])
def test_full_disk_on_stdout_is_one_line_and_exit_1(run, mode):
    with open("/dev/full", "w") as full:
        done = nextchar("sample", run, "--length", "100", *mode, stdout=full)
    assert done.returncode == 1
    assert "cannot write to standard output: No space left on device" in one_error_line(done.stderr)


@pytest.mark.parametrize(
    "mode",
    [
        [],
        ["--num-samples", "3"],
        ["--json"],
        ["--json", "--num-samples", "2"],
        ["--greedy", "--num-samples", "2"],
    ],
    ids=["one", "three", "json", "json-two", "greedy-two"],
)
def test_ctrl_c_keeps_what_was_drawn_in_every_mode(run, mode):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nextchar",
            "sample",
            str(run),
            "--length",
            "100000000",
            "--seed",
            "2",
            *mode,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "NEXTCHAR_PROGRESS": "1"},
    )
    first = b""
    if "--json" in mode:  # nothing reaches stdout before the end: wait for the notice on stderr
        wait_until(lambda: b"drawing" in proc.stderr.readline(), proc)
    else:
        first = proc.stdout.read(1)  # the first character has been streamed
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    out, err = (first + out).decode(), err.decode()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "nextchar sample: interrupted" and "Traceback" not in err
    rows = 2 if "2" in mode else (3 if "3" in mode else 1)
    if "--json" in mode:
        result = json.loads(out)
        assert result["interrupted"] is True and len(result["samples"]) == rows
        lengths = [len(s) for s in result["samples"]]  # stopped between two characters
        assert lengths[0] >= 1 and max(lengths) - min(lengths) <= 1, lengths
    else:
        samples = out[:-1].split("\n\n") if rows > 1 else [out]
        assert out.endswith("\n") and len(samples) >= rows and samples[0]


@pytest.mark.slow
def test_a_seed_fixes_each_sample_through_the_cli(run):
    three = nextchar(
        "sample",
        run,
        "--length",
        "150",
        "--seed",
        "9",
        "--num-samples",
        "3",
        "--weights",
        "fp32",
        "--json",
    )
    samples = json.loads(three.stdout)["samples"]
    assert len(set(samples)) == 3
    for count in (1, 2):
        fewer = nextchar(
            "sample",
            run,
            "--length",
            "150",
            "--seed",
            "9",
            "--num-samples",
            count,
            "--weights",
            "fp32",
            "--json",
        )
        assert json.loads(fewer.stdout)["samples"] == samples[:count]
    plain = nextchar("sample", run, "--length", "150", "--seed", "9", "--weights", "fp32")
    assert plain.stdout == samples[0] + "\n"  # streamed text equals the JSON text
    shorter = nextchar("sample", run, "--length", "60", "--seed", "9", "--weights", "fp32")
    assert samples[0].startswith(shorter.stdout[:-1])


def test_spooled_samples_move_to_disk_and_come_back_in_order(tmp_path, monkeypatch):
    """Samples held back for later are kept in temporary files past a size, not in memory."""
    import io

    import nextchar.output as output

    monkeypatch.setattr(output, "SPOOL_MEMORY_BYTES", 64)
    monkeypatch.setattr(output, "PIECES_PER_WRITE", 8)
    out = io.StringIO()
    writer = SampleWriter(out, 3, as_json=False)
    texts = ["row zero " * 20, "row one, «quoted» " * 20, "行二 " * 40]
    for step in range(max(map(len, texts))):
        for row, text in enumerate(texts):
            if step < len(text):
                writer.add(row, text[step])
    assert all(writer.spools[row]._rolled for row in (1, 2))  # on disk, not in memory
    writer.finish()
    assert out.getvalue() == "\n\n".join(texts) + "\n"
    out = io.StringIO()
    writer = SampleWriter(out, 2, as_json=True)
    for row, text in enumerate(['a "quote" \\ and\nnewline' * 9, "\u202e\x00"]):
        for char in text:
            writer.add(row, char)
    writer.finish(interrupted=True)
    assert json.loads(out.getvalue()) == {
        "samples": ['a "quote" \\ and\nnewline' * 9, "\u202e\x00"],
        "interrupted": True,
    }


@pytest.mark.slow
def test_train_hint_primes_with_characters_of_the_vocabulary(run, tmp_path):
    text = tmp_path / "greek.txt"
    text.write_text("Αλφα βήτα γάμμα δέλτα\n" * 200, encoding="utf-8")
    done = nextchar("train", text, "--out", tmp_path / "my run", *TINY_TRAIN_FLAGS)
    hint = next(line for line in done.stderr.splitlines() if line.startswith("sample it: "))
    command = shlex.split(hint.removeprefix("sample it: "))
    assert command[:3] == ["nextchar", "sample", str(tmp_path / "my run")]
    assert command[command.index("--prime") + 1] == "Αλφα"
    sampled = nextchar(*command[1:], "--length", "5")  # the suggestion runs as it is
    assert sampled.returncode == 0 and sampled.stdout.startswith("Αλφα")


@pytest.mark.slow
def test_report_passage_is_what_eval_scores_with_invisible_marks_shown(run, tmp_path):
    """CRLF line ends are kept (eval scores the \\r), and bidirectional and zero-width characters
    show as visible U+XXXX marks: the raw character never reaches the page."""
    passage = tmp_path / "passage.txt"
    raw = "héllo\r\nwörld \u202eab\u200bcd\ufeff日本\x85\n"
    passage.write_bytes(raw.encode("utf-8"))
    page = tmp_path / "r.html"
    done = nextchar("report", run, "--text", passage, "--out", page)
    assert done.returncode == 0, done.stderr
    html = page.read_text(encoding="utf-8")
    surprisal = html[html.index('id="surprisal"') : html.index('id="neurons"')]
    assert surprisal.count('<span class="ch') == len(raw)  # one per character eval reads
    assert "␍" in surprisal  # the \r of CRLF, not dropped by newline translation
    for invisible in ("\u202e", "\u200b", "\ufeff", "\x85"):
        assert invisible not in html
        assert f"U+{ord(invisible):04X}</span>" in surprisal
    scored = json.loads(nextchar("eval", run, passage, "--json").stdout)
    assert scored["chars"] + scored["unknown_chars"] + 1 == len(raw)
