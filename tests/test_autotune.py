"""`auto` decided by measuring: the pick, the cache, the candidates, and what training records."""

import json
import os
import platform
import subprocess
import sys

import pytest
import torch

import nextchar
from clock import VirtualClock
from nextchar import autotune, devices
from nextchar.autotune import Choice, cache_get, cache_put, decide, pick
from nextchar.config import ModelConfig

CPU = torch.device("cpu")
SMALL = ModelConfig(vocab_size=20, hidden=32, layers=1, embed=8)


def test_pick_takes_the_fastest_but_never_something_slower_than_fp32():
    assert pick({"fp32": 1.0, "bf16": 0.5}) == "bf16"
    assert pick({"fp32": 1.0, "bf16": 1.4}) == "fp32"  # emulated bf16: slower, never chosen
    assert pick({"fp32": 1.0, "bf16": 0.99}) == "fp32"  # within noise of fp32: keep fp32
    assert pick({"fp32": 1.0, "bf16": 0.6, "int8": 0.3}) == "int8"
    assert pick({"fp32": 1.0}) == "fp32" and pick({}) == "fp32"


def test_decide_measures_once_then_reads_the_cache(fresh_cache):
    calls = []

    def measure():
        calls.append(1)
        return {"fp32": 0.2, "bf16": 0.1}

    first = decide("train", {"hidden": 7}, CPU, measure)
    again = decide("train", {"hidden": 7}, CPU, measure)
    assert (first.value, first.how) == ("bf16", "measured")
    assert (again.value, again.how, again.timings) == ("bf16", "cached", first.timings)
    assert len(calls) == 1
    decide("train", {"hidden": 8}, CPU, measure)  # other shapes: measured again
    assert len(calls) == 2


def _entry(fresh_cache):
    (path,) = fresh_cache.glob("autotune-train-*.json")
    return path


@pytest.mark.parametrize(
    "damage",
    [
        "garbage",
        "empty",
        "foreign key",
        "nan",
        "negative",
        "not a dict",
        "old version",
        "missing seconds",
    ],
)
def test_damaged_or_foreign_cache_entries_are_ignored(fresh_cache, damage):
    decide("train", {"hidden": 9}, CPU, lambda: {"fp32": 0.2, "bf16": 0.1})
    path = _entry(fresh_cache)
    entry = json.loads(path.read_text())
    if damage == "garbage":
        path.write_bytes(b"\x00\xff{not json")
    elif damage == "empty":
        path.write_text("")
    elif damage == "foreign key":  # another machine's entry under this name
        entry["key"]["machine"]["cpu"] = "Some Other CPU"
        entry["seconds"] = {"fp32": 0.1, "bf16": 9.0}
        path.write_text(json.dumps(entry))
    elif damage == "nan":
        path.write_text(json.dumps({**entry, "seconds": {"fp32": float("nan"), "bf16": 0.1}}))
    elif damage == "negative":
        path.write_text(json.dumps({**entry, "seconds": {"fp32": -1, "bf16": 0.1}}))
    elif damage == "not a dict":
        path.write_text("[1, 2, 3]")
    elif damage == "old version":
        path.write_text(json.dumps({**entry, "version": 0}))
    elif damage == "missing seconds":
        path.write_text(json.dumps({k: v for k, v in entry.items() if k != "seconds"}))
    again = decide("train", {"hidden": 9}, CPU, lambda: {"fp32": 0.3, "bf16": 0.1})
    assert (again.how, again.timings) == ("measured", {"fp32": 0.3, "bf16": 0.1})
    assert cache_get(json.loads(path.read_text())["key"]) == {"fp32": 0.3, "bf16": 0.1}  # rewritten


def test_an_unwritable_cache_is_not_an_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("NEXTCHAR_CACHE_DIR", str(blocker / "cache"))  # under a file: cannot exist
    choice = decide("train", {"hidden": 3}, CPU, lambda: {"fp32": 0.1, "bf16": 0.2})
    assert choice.value == "fp32"
    cache_put({"kind": "train"}, {"fp32": 1.0})  # silently not stored


def test_the_cache_key_holds_the_machine_and_its_isa_caps(fresh_cache, monkeypatch):
    decide("train", {"hidden": 5}, CPU, lambda: {"fp32": 0.2, "bf16": 0.1})
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # another CPU, as far as timings go
    assert decide("train", {"hidden": 5}, CPU, lambda: {"fp32": 0.1, "bf16": 0.2}).value == "fp32"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    torch.set_num_threads(torch.get_num_threads() + 1)
    try:
        assert (
            decide("train", {"hidden": 5}, CPU, lambda: {"fp32": 0.1, "bf16": 0.3}).how
            == "measured"
        )
    finally:
        torch.set_num_threads(torch.get_num_threads() - 1)
    assert decide("train", {"hidden": 5}, CPU, lambda: {}).how == "cached"


def test_named_precisions_are_not_timed(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("timed although the user named the precision")

    monkeypatch.setattr(devices, "train_step_seconds", refuse)
    monkeypatch.setattr(autotune, "time_interleaved", refuse)
    assert devices.train_precision("bf16", SMALL, 4, 8, CPU) == Choice("bf16", how="named")
    assert devices.eval_precision("fp32", SMALL, CPU).value == "fp32"


def test_without_bf16_hardware_auto_is_fp32_without_timing(monkeypatch):
    monkeypatch.setattr(autotune, "bf16_possible", lambda device: False)
    monkeypatch.setattr(autotune, "time_interleaved", lambda *a, **k: pytest.fail("timed"))
    assert devices.train_precision("auto", SMALL, 4, 8, CPU).value == "fp32"
    assert devices.eval_precision("auto", SMALL, CPU).value == "fp32"


@pytest.mark.parametrize("bf16_seconds, expected", [(0.05, "bf16"), (0.2, "fp32")])
def test_training_auto_follows_the_timings(fresh_cache, monkeypatch, bf16_seconds, expected):
    """The decision comes from the timings on this machine, whatever the CPU's flags say."""
    monkeypatch.setattr(autotune, "bf16_possible", lambda device: True)
    monkeypatch.setattr(
        devices, "train_step_seconds", lambda *a, **k: {"fp32": 0.1, "bf16": bf16_seconds}
    )
    assert devices.train_precision("auto", SMALL, 4, 8, CPU).value == expected


def test_a_candidate_that_cannot_run_is_dropped():
    def broken():
        raise RuntimeError("could not create a primitive descriptor")

    timings = autotune.time_interleaved({"fp32": lambda: None, "bf16": broken}, 0.01)
    assert list(timings) == ["fp32"]


def test_a_clear_loser_is_timed_twice_and_the_winner_goes_on_alone(monkeypatch):
    """After two rounds, a candidate CLEAR_LOSS times slower than the fastest in both is out:
    the measuring costs less where the answer is plain (bf16 with AMX, or emulated bf16)."""
    clock = VirtualClock()
    monkeypatch.setattr(autotune, "time", clock)
    slow = 0.002 * autotune.CLEAR_LOSS * 2
    timings = autotune.time_interleaved(
        {
            "fast": clock.candidate("fast", 0.002),
            "slow": clock.candidate("slow", slow),
            "close": clock.candidate("close", 0.0024),
        },
        0.05,
    )
    assert clock.calls["slow"] == 3  # the warm-up and two timed rounds
    assert clock.calls["fast"] == clock.calls["close"] >= 4  # the warm-up and three rounds or more
    assert timings == pytest.approx({"fast": 0.002, "slow": slow, "close": 0.0024})
    assert autotune.clear(timings)
    assert not autotune.clear({"fp32": 1.0, "bf16": 1.2}) and not autotune.clear({"fp32": 1.0})


def test_a_candidate_that_has_just_run_is_timed_without_a_warm_up(monkeypatch):
    """devices.train_step_seconds times the winner alone right after the interleaved rounds: it
    is warm, so it pays for timed rounds only (costs in binary fractions: exact sums)."""
    calls = {}
    for warm_up in (False, True):
        clock = VirtualClock()
        monkeypatch.setattr(autotune, "time", clock)
        timings = autotune.time_interleaved(
            {"bf16": clock.candidate("bf16", 0.125)}, 0.25, warm_up=warm_up
        )
        calls[warm_up] = clock.calls["bf16"]
        assert timings == {"bf16": 0.125}
    assert calls == {False: 3, True: 4}  # three timed rounds, and the warm-up before them


def test_one_stall_of_the_winner_does_not_put_it_out(monkeypatch):
    """The winner stalls 10x in its first timed round (another process took the core): one
    bad round is not a clear loss, so it stays in, is timed on, and still wins."""
    clock = VirtualClock()
    monkeypatch.setattr(autotune, "time", clock)
    timings = autotune.time_interleaved(
        {
            "bf16": clock.candidate("bf16", 0.001, 0.010, 0.001),  # warm-up, stall, then steady
            "fp32": clock.candidate("fp32", 0.0012),
        },
        0.05,
    )
    assert clock.calls["bf16"] == clock.calls["fp32"] >= 4
    assert min(timings, key=timings.get) == "bf16" and not autotune.clear(timings)


def test_emulated_bf16_is_timed_twice_and_a_near_tie_on(monkeypatch):
    """Without AMX bf16 runs about 1.3x slower than fp32: out after its two rounds, so the
    first-use measuring stays under 2 s there too; a candidate 1.2x slower is a near tie and is
    timed as long as the winner (costs in binary fractions: exact sums)."""
    for slower, calls in ((1.3125, 3), (1.1875, None)):
        clock = VirtualClock()
        monkeypatch.setattr(autotune, "time", clock)
        autotune.time_interleaved(
            {
                "fp32": clock.candidate("fp32", 0.0625),
                "bf16": clock.candidate("bf16", 0.0625 * slower),
            },
            0.25,
        )
        assert clock.calls["fp32"] >= 4  # the warm-up and three rounds or more
        assert clock.calls["bf16"] == (calls or clock.calls["fp32"])  # 3: warm-up and two rounds


def test_real_timings_cover_every_candidate_and_are_positive():
    timings = devices.train_step_seconds(SMALL, 4, 8, CPU, devices.precision_candidates(CPU), 0.05)
    assert set(timings) <= {"fp32", "bf16"} and "fp32" in timings
    assert all(0 < t < 5 for t in timings.values())


def test_under_an_avx2_cpu_auto_resolves_to_fp32(tmp_path):
    """oneDNN capped at AVX2 (a typical laptop): bf16 is not native there, so `auto` must not
    pick it, for training, evaluation or sampling."""
    code = (
        "import torch, nextchar.devices as d, nextchar.sample as s\n"
        "from nextchar.config import ModelConfig\n"
        "from nextchar.model import CharRNN\n"
        "c = ModelConfig(vocab_size=65, hidden=128, layers=2, embed=64)\n"
        "cpu = torch.device('cpu')\n"
        "print(d.train_precision('auto', c, 32, 64, cpu).value,"
        " d.eval_precision('auto', c, cpu).value,"
        " s.sample_precision('auto', CharRNN(c), 64).value)\n"
    )
    env = dict(
        os.environ,
        ONEDNN_MAX_CPU_ISA="AVX2",
        ATEN_CPU_CAPABILITY="avx2",
        NEXTCHAR_CACHE_DIR=str(tmp_path),
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    train, evaluation, sampling = out.stdout.split()
    assert (train, evaluation) == ("fp32", "fp32")
    assert sampling != "bf16"


def test_bf16_training_follows_fp32_loss_per_step(tmp_path, tiny_text, tiny_options):
    """bf16 autocast is a speed choice, not a different optimisation: over 60 steps of a tiny
    model its training loss stays within 2% of fp32's at every logged step (bf16 keeps 8 bits
    of mantissa: a relative rounding of 0.4% per product, averaged over the window)."""
    if not devices.precision_candidates(CPU) == ("fp32", "bf16"):
        pytest.skip("no bf16 on this CPU")
    losses = {}
    for precision in ("fp32", "bf16"):
        run = nextchar.train(
            text=tiny_text,
            out=tmp_path / precision,
            steps=60,
            precision=precision,
            log_every=5,
            **{k: v for k, v in tiny_options.items() if k != "log_every"},
        )
        records = [
            json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()
        ]
        losses[precision] = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses["fp32"]) == 12
    for fp32, bf16 in zip(losses["fp32"], losses["bf16"]):
        assert bf16 == pytest.approx(fp32, rel=0.02)
    assert losses["fp32"][-1] < losses["fp32"][0] - 0.5  # and it did learn


@pytest.mark.slow
def test_train_says_and_records_what_auto_chose(tmp_path, tiny_file):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nextchar",
            "train",
            str(tiny_file),
            "--out",
            str(tmp_path / "run"),
            "--steps",
            "5",
            "--hidden",
            "32",
            "--layers",
            "1",
            "--batch-size",
            "4",
            "--seq-len",
            "16",
            "--sample-chars",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    first = out.stderr.splitlines()[0]
    record = json.loads((tmp_path / "run" / "machine.json").read_text())
    chosen = record["train_precision"]["value"]
    assert first.startswith(f"precision {chosen} (")
    run_machine = record["machine"]
    assert run_machine == autotune.machine(CPU) | {
        "threads": run_machine["threads"],
        "allocator": run_machine["allocator"],  # the CLI keeps freed memory (allocator.py)
    }
    assert {"cpu", "flags", "l2_bytes", "torch", "threads", "isa_caps"} <= set(run_machine)
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert run_machine["allocator"] == "kept (glibc)"
    assert record["eval_precision"]["value"] in ("fp32", "bf16")
    if len(record["train_precision"]["seconds"]) > 1:
        assert "chars/s" in first
    assert record["budget"] is None  # a --steps run: no budget to spend


@pytest.mark.slow
def test_a_time_budget_records_its_plan(tmp_path, tiny_text, tiny_options):
    options = {k: v for k, v in tiny_options.items() if k != "hidden"}
    run = nextchar.train(text=tiny_text, out=tmp_path / "run", time=4, **options)
    record = json.loads((run.path / "machine.json").read_text())
    plan = record["budget"]
    config = json.loads((run.path / "config.json").read_text())
    assert plan["options"]["hidden"] == config["model"]["hidden"]
    assert plan["param_chars_per_s"] > 0 and plan["chars"] > 0 and plan["epochs"] > 0
    assert plan["batch"] == config["train"]["batch_size"]  # the batch the plan chose is run
    assert 1 / 2 < plan["params"] / plan["target_params"] < 2 or config["model"]["hidden"] == 128


def test_evaluation_is_sized_to_a_tenth_of_the_run(tmp_path, tiny_options):
    """A short run on a large text scores a part of the validation split at each evaluation
    (sized from the measured speeds), not two million characters; a named --eval-chars stays."""
    from nextchar.budget import EVAL_CHARS, eval_chars

    assert eval_chars(0.5, 100_000) == EVAL_CHARS[0]  # the floor
    assert eval_chars(1e6, 100_000) == EVAL_CHARS[1]  # the cap
    assert eval_chars(120, 120_000) == 120_000  # 10% of 120 s over 12 evaluations at 120k chars/s
    line = "The quick brown fox jumps over the lazy dog; naive cafe, deja vu.\n"
    text = line * 14_000  # ~930 KB: a validation split of ~46,000 characters
    run = nextchar.train(text=text, out=tmp_path / "short", steps=4, **tiny_options)
    config = json.loads((run.path / "config.json").read_text())
    assert config["train"]["eval_chars"] == EVAL_CHARS[0]
    assert run.best_val.chars == EVAL_CHARS[0] - 1
    named = nextchar.train(
        text=text, out=tmp_path / "named", steps=4, eval_chars=30_000, **tiny_options
    )
    assert json.loads((named.path / "config.json").read_text())["train"]["eval_chars"] == 30_000
