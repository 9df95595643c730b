"""metrics.jsonl through its owner, runfolder.py: every record kind is written and read back
unchanged, the lines keep the keys runs have always had (so older runs and other readers still
read them), and what is no record is left out rather than crashing a reader."""

import json
import math

import pytest

from nextchar.evaluate import EvalResult
from nextchar.metrics import EvalRecord, FinalRecord, SkippedRecord, TrainRecord, parse_record
from nextchar.runfolder import METRICS, RunFolder

VAL = EvalResult(chars=900, nats_per_char=1.4, bits_per_char=2.02, perplexity=4.06, accuracy=0.41)
RECORDS = [
    TrainRecord(step=10, chars=640, time=1.25, loss=2.5, lr=0.003, chars_per_s=512.0),
    EvalRecord(
        step=10,
        chars=640,
        time=1.5,
        sample="to be",
        averaged_steps=3,
        val_loss=1.4,
        val_bpc=2.02,
        val_accuracy=0.41,
    ),
    EvalRecord(step=20, chars=1280, time=2.5, sample=""),  # no validation text, no averaging
    SkippedRecord(step=12, count=2),
    FinalRecord(
        step=20,
        chars=1280,
        time=3.0,
        stop="steps",
        val=VAL,
        test=EvalResult(
            chars=5,
            nats_per_char=1.5,
            bits_per_char=2.16,
            perplexity=4.48,
            accuracy=0.4,
            unknown_chars=1,
            unknown_symbols=["\u2603"],
        ),
    ),
    FinalRecord(step=20, chars=1280, time=3.0, stop="time", val=None, test=None),
]


def test_every_kind_round_trips(tmp_path):
    folder = RunFolder(tmp_path)
    for record in RECORDS:
        folder.append_metrics(record)
    assert folder.read_records() == RECORDS


def test_the_lines_keep_the_keys_runs_have_always_written(tmp_path):
    folder = RunFolder(tmp_path)
    for record in RECORDS:
        folder.append_metrics(record)
    lines = [json.loads(line) for line in (tmp_path / METRICS).read_text().splitlines()]
    assert [list(line) for line in lines] == [
        ["kind", "step", "chars", "time", "loss", "lr", "chars_per_s"],
        [
            "kind",
            "step",
            "chars",
            "time",
            "sample",
            "averaged_steps",
            "val_loss",
            "val_bpc",
            "val_accuracy",
        ],
        ["kind", "step", "chars", "time", "sample"],  # unset optional fields are left out
        ["kind", "step", "count", "reason"],
        ["kind", "step", "chars", "time", "stop", "val", "test"],
        ["kind", "step", "chars", "time", "stop", "val", "test"],  # null, not left out
    ]
    assert lines[4]["val"] == VAL.to_dict() and lines[5]["val"] is None
    assert folder.read_metrics() == lines  # the raw reader: the objects as written


def test_an_older_or_newer_line_still_reads(tmp_path):
    old = [  # a host-side skip before "count" existed; keys a later version might add
        {"kind": "skipped", "step": 4, "reason": "non-finite loss or gradient"},
        {
            "kind": "train",
            "step": 5,
            "chars": 320,
            "time": 0.5,
            "loss": 3.0,
            "lr": 0.01,
            "chars_per_s": 640.0,
            "grad_norm": 0.7,
        },
        {
            "kind": "final",
            "step": 5,
            "chars": 320,
            "time": 0.6,
            "stop": "steps",
            "val": {**VAL.to_dict(), "calibration": 0.1},
            "test": None,
            "host": "x",
        },
    ]
    (tmp_path / METRICS).write_text("".join(json.dumps(r) + "\n" for r in old))
    records = RunFolder(tmp_path).read_records()
    assert records == [
        SkippedRecord(step=4, count=1),
        TrainRecord(step=5, chars=320, time=0.5, loss=3.0, lr=0.01, chars_per_s=640.0),
        FinalRecord(step=5, chars=320, time=0.6, stop="steps", val=VAL, test=None),
    ]


@pytest.mark.parametrize(
    "entry",
    [
        {"kind": "report", "step": 3},  # a kind no record has
        {"kind": "train", "step": 5, "loss": 3.0},  # fields a train line always has are missing
        {
            "kind": "eval",
            "step": "ten",
            "chars": 1,
            "time": 0.0,
            "sample": "",
        },  # a field of another type
        {
            "kind": "final",
            "step": 5,
            "chars": 3,
            "time": 0.6,
            "stop": "steps",
            "val": {"chars": 1},
            "test": None,
        },  # an evaluation result cut short
        [1, 2],
        "text",
        None,
    ],
)
def test_what_is_no_record_is_left_out(entry):
    assert parse_record(entry) is None


def test_a_line_cut_short_is_left_out_and_nan_survives(tmp_path):
    folder = RunFolder(tmp_path)
    folder.append_metrics(
        TrainRecord(step=5, chars=3, time=0.1, loss=math.nan, lr=0.01, chars_per_s=1.0)
    )
    with open(tmp_path / METRICS, "a") as f:
        f.write('{"kind": "ev')  # a crash in mid-line
    (record,) = folder.read_records()
    assert record.step == 5 and math.isnan(record.loss)


def test_truncating_keeps_the_lines_up_to_a_step_as_they_were(tmp_path):
    lines = [
        {"kind": "train", "step": 5, "extra": [1]},
        {"kind": "eval", "step": 10},
        {"kind": "train", "step": 15},
    ]
    (tmp_path / METRICS).write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "tr')
    RunFolder(tmp_path).truncate_metrics(10)
    assert RunFolder(tmp_path).read_metrics() == lines[:2]
