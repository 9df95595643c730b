"""docs/serving.md runs: each curl request against a real service, its answer compared with the
JSON (or events) the page shows after it, and each ```python block in a fresh interpreter.

Answers are compared by shape (the same keys at every level, the same kinds of values; the text
a model writes differs from the page's model to this test's), error answers word for word.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import nextchar
from serving import events, running

DOC = Path(__file__).resolve().parents[1] / "docs" / "serving.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```\n", re.MULTILINE | re.DOTALL)


def blocks(markdown: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(markdown)]


def curl_examples(markdown: str) -> list[tuple[str, str, str]]:
    """(curl command, kind of the answer block, answer) for each ```bash curl block."""
    found, found_blocks = [], blocks(markdown)
    for (kind, body), (answer_kind, answer) in zip(found_blocks, found_blocks[1:]):
        if kind == "bash" and body.lstrip().startswith("curl "):
            found.append((body.replace("\\\n", " "), answer_kind, answer))
    return found


def curl(command: str, base: str) -> httpx.Response:
    """The request a `curl -s[N] [-H ...] [-d ...] URL` line makes, made with httpx."""
    words = shlex.split(command)
    assert words[0] == "curl"
    headers, data, url, i = {}, None, None, 1
    while i < len(words):
        word = words[i]
        if word in ("-s", "-N", "-sN"):
            pass
        elif word == "-H":
            name, _, value = words[i + 1].partition(":")
            headers[name.strip()] = value.strip()
            i += 1
        elif word == "-d":
            data = words[i + 1]
            i += 1
        else:
            assert url is None, f"unexpected curl argument {word!r}"
            url = word
        i += 1
    assert url.startswith("localhost:8000/"), url
    method = "POST" if data is not None else "GET"
    return httpx.request(
        method,
        base + url[len("localhost:8000") :],
        headers=headers,
        content=data.encode() if data is not None else None,
        timeout=30,
    )


def same_shape(expected, actual, where="answer") -> None:
    """The same keys at every level and the same kinds of values (int and float alike); each item
    of a list shaped like one of the items shown."""

    def kind(v):
        return (
            "number"
            if isinstance(v, (int, float)) and not isinstance(v, bool)
            else type(v).__name__
        )

    assert kind(expected) == kind(actual), f"{where}: {expected!r} vs {actual!r}"
    if isinstance(expected, dict):
        assert sorted(expected) == sorted(actual), (
            f"{where}: keys {sorted(expected)} vs {sorted(actual)}"
        )
        for key in expected:
            same_shape(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, list) and expected:
        for item in actual:
            problems = []
            for shown in expected:
                try:
                    same_shape(shown, item, f"{where}[]")
                    break
                except AssertionError as exc:
                    problems.append(str(exc))
            else:
                raise AssertionError(
                    f"{where}[]: {item!r} is shaped like no item shown ({problems[0]})"
                )


def test_block_parsing():
    markdown = (
        "x\n```bash\ncurl -s a \\\n  -d '{}'\n```\n\n```json\n{}\n```\n```python\nprint(1)\n```\n"
    )
    assert curl_examples(markdown) == [("curl -s a    -d '{}'\n", "json", "{}\n")]
    with pytest.raises(AssertionError):
        same_shape({"a": [1]}, {"a": ["x"]})
    with pytest.raises(AssertionError):
        same_shape({"a": 1}, {"a": 1, "b": 2})


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory):
    """A tiny model trained briefly on the bundled corpus: the docs' vocabulary."""
    out = tmp_path_factory.mktemp("docs") / "shakespeare"
    nextchar.train(
        out=out,
        steps=20,
        hidden=32,
        layers=1,
        embed=8,
        batch_size=4,
        seq_len=16,
        eval_chars=2000,
        sample_chars=0,
        quiet=True,
    )
    return out


def test_the_curl_examples_answer_as_shown(shakespeare):
    examples = curl_examples(DOC.read_text(encoding="utf-8"))
    assert len(examples) >= 7, "docs/serving.md lost its curl examples"
    with running([f"shakespeare={shakespeare}"]) as (base, _, problems):
        for command, kind, shown in examples:
            answer = curl(command, base)
            if kind == "json":
                expected = json.loads(shown)
                assert answer.headers["content-type"] == "application/json", command
                if "error" in expected:
                    assert answer.status_code in (400, 413, 415, 422), command
                    assert answer.json() == expected, command
                else:
                    assert answer.status_code == 200, (command, answer.text)
                    same_shape(expected, answer.json())
            else:
                assert kind == "text" and answer.headers["content-type"].startswith(
                    "text/event-stream"
                )
                expected, got = events(shown.splitlines()), events(answer.text.splitlines())
                assert [e for e, _ in got][0] == "start" and [e for e, _ in got][-1] == "done"
                assert {e for e, _ in got[1:-1]} == {e for e, _ in expected[1:-1]} == {"text"}
                for (name, data), (_, shown_data) in zip(
                    got[:1] + got[-1:], expected[:1] + expected[-1:]
                ):
                    same_shape(shown_data, data, name)
        assert not problems.errors()


def run_python(code: str, cwd: Path) -> str:
    """A block in a fresh interpreter; it must not have imported torch or nextchar."""
    check = '\nimport sys\nassert not {"torch", "nextchar"} & set(sys.modules), "imported torch or nextchar"\n'
    done = subprocess.run(
        [sys.executable, "-c", code + check], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_python_examples_run(shakespeare, tmp_path):
    python = [body for kind, body in blocks(DOC.read_text(encoding="utf-8")) if kind == "python"]
    assert len(python) == 2, "docs/serving.md lost its python examples"
    client, onnx_example = python
    with running([f"shakespeare={shakespeare}"]) as (base, _, _):
        printed = run_python(client.replace("http://localhost:8000", base), tmp_path)
    assert printed.startswith("JULIET:") and len(printed) == len("JULIET:") + 200 + 1
    from processes import cli

    assert cli("export", shakespeare, "--out", tmp_path / "shakespeare.onnx")[0] == 0
    printed = run_python(onnx_example, tmp_path)
    assert printed.startswith("ROMEO:") and len(printed) == len("ROMEO:") + 200 + 1
