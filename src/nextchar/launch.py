"""Starting a run, new or resumed: options checked, config assembled, data and folder ready.

A new run: flat options -> RunConfig (build_config), the text prepared into the folder (staged,
so bad input leaves no half-made run and an old run intact), the budget rule and `auto`'s
precision choices settled on rank 0 and written, then every rank trains. A resumed run: the
saved config with the training options changed, the precisions recorded on this machine, and the
trainer restores the checkpoint. Only here are flags turned into a config; trainer.py gets it whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from . import autotune, budget, devices, distributed
from .atomic import temp_path
from .autotune import Choice
from .config import DEFAULT_TIME, DataConfig, ModelConfig, RunConfig, TrainConfig
from .corpus import discover
from .data import TokenData, is_prepared, load_prepared, prepare
from .devices import EVAL_SHAPE, eval_precision, resolve_device, train_precision
from .errors import UserError
from .fields import to_dict
from .metrics import TrainResult
from .runfolder import DATA, LATEST, RunFolder
from .trainer import Trainer

TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)} - {"vocab_size"}
DATA_FIELDS = {f.name for f in dataclasses.fields(DataConfig)}


def build_config(options: dict[str, Any], vocab_size: int = 0) -> RunConfig:
    """Flat options (any field of DataConfig / ModelConfig / TrainConfig) -> RunConfig.

    Options left out take budget.RUN_DEFAULTS; for a --time run, budget.plan replaces some of
    those with what the budget buys on this machine."""
    unknown = sorted(set(options) - TRAIN_FIELDS - MODEL_FIELDS - DATA_FIELDS)
    if unknown:
        raise UserError(f"unknown training option(s): {', '.join(unknown)}")
    options = dict(options)
    if "time" in options:  # checked first: the budget picks the defaults
        options["time"] = TrainConfig(time=options["time"]).time
    if not (options.get("steps") or options.get("epochs") or options.get("time")):
        options["time"] = DEFAULT_TIME
    merged = {**budget.RUN_DEFAULTS, **options}
    return RunConfig(
        data=DataConfig(**{k: v for k, v in merged.items() if k in DATA_FIELDS}),
        model=ModelConfig(
            vocab_size=vocab_size, **{k: v for k, v in merged.items() if k in MODEL_FIELDS}
        ),
        train=TrainConfig(**{k: v for k, v in merged.items() if k in TRAIN_FIELDS}),
    )


def _compute_device(config: RunConfig, dist: distributed.Dist) -> torch.device:
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    device = resolve_device(config.train.device)
    return torch.device("cuda", dist.local_rank) if device.type == "cuda" else device


def _settle(
    options: dict[str, Any], config: RunConfig, train_chars: int, device: torch.device
) -> tuple[RunConfig, dict[str, Any]]:
    """The budget rule and the precision decisions for a new run -> its final config and the
    machine.json record (the machine, what `auto` chose and the timings behind it)."""
    given = {k: v for k, v in options.items() if v is not None}
    if not (given.get("steps") or given.get("epochs") or given.get("time")):
        given["time"] = DEFAULT_TIME
    tc = config.train
    plan = budget.plan(
        given, config.model, tc.batch_size, tc.seq_len, train_chars, device, tc.precision
    )
    config = build_config({**plan.options, **given}, vocab_size=config.model.vocab_size)
    evaluation = eval_precision(tc.precision, config.model, device)
    if "eval_chars" not in given:  # evaluations take about a tenth of the run, not more
        config = replace(
            config,
            train=replace(
                config.train,
                eval_chars=_eval_chars(config, plan.precision, evaluation, train_chars, device),
            ),
        )
    record = {
        "machine": autotune.machine(device),
        "train_precision": plan.precision.to_dict(),
        "eval_precision": evaluation.to_dict(),
        "budget": plan.to_dict(),
    }
    return config, record


def _eval_chars(
    config: RunConfig,
    train_choice: Choice,
    eval_choice: Choice,
    train_chars: int,
    device: torch.device,
) -> int:
    """--eval-chars for a run of this length, from the measured step and evaluation speeds."""
    tc = config.train
    step_s = (
        train_choice.timings.get(train_choice.value)
        or devices.train_step_seconds(
            config.model, tc.batch_size, tc.seq_len, device, (train_choice.value,)
        )[train_choice.value]
    )
    eval_s = (
        eval_choice.timings.get(eval_choice.value)
        or devices.eval_seconds(config.model, device, (eval_choice.value,))[eval_choice.value]
    )
    steps = [tc.steps] if tc.steps else []
    if tc.epochs:
        steps.append(tc.epochs * train_chars / (tc.batch_size * tc.seq_len))
    run_seconds = min(([tc.time] if tc.time else []) + [n * step_s for n in steps])
    return budget.eval_chars(run_seconds, EVAL_SHAPE[0] * EVAL_SHAPE[1] / eval_s)


def _hardware(machine: dict[str, Any] | None) -> dict[str, Any]:
    """A machine record but its allocator setting, which changes speed, not what is computed."""
    return {k: v for k, v in (machine or {}).items() if k != "allocator"}


def _resumed_choices(folder: RunFolder, config: RunConfig, device: torch.device) -> dict[str, Any]:
    """On the machine the run was made on, the precisions it recorded (so a resumed run computes
    exactly as before); elsewhere, or for a precision named now, decided afresh."""
    record = folder.read_machine()
    if (
        _hardware(record.get("machine")) == _hardware(autotune.machine(device))
        and config.train.precision == "auto"
        and "train_precision" in record
        and "eval_precision" in record
    ):
        return record
    tc = config.train
    return {
        **record,
        "machine": autotune.machine(device),
        "train_precision": train_precision(
            tc.precision, config.model, tc.batch_size, tc.seq_len, device
        ).to_dict(),
        "eval_precision": eval_precision(tc.precision, config.model, device).to_dict(),
    }


def _say_choices(
    record: dict[str, Any], config: RunConfig, log: TextIO | None, quiet: bool
) -> None:
    """The first lines of `train`: 'precision bf16 (measured: bf16 21.3k chars/s, fp32 12.1k
    chars/s); evaluation ...' and, for a --time run, what the budget bought."""
    if quiet:
        return
    per_step = config.train.batch_size * config.train.seq_len
    train = Choice.from_dict(record["train_precision"]).describe(per_step)
    evaluation = Choice.from_dict(record["eval_precision"]).describe(EVAL_SHAPE[0] * EVAL_SHAPE[1])
    lines = [f"precision {train}; evaluation {evaluation}"]
    plan = record.get("budget") or {}
    if plan.get("params"):
        lines.append(budget.describe(plan, config.model))
    print("\n".join(lines), file=log if log is not None else sys.stderr, flush=True)


def _check_trainable(data: TokenData, config: RunConfig) -> None:
    lo, hi = data.splits["train"]
    need = config.train.seq_len + 1
    if hi - lo < need:
        raise UserError(
            f"the training split has {hi - lo} characters, fewer than one training window "
            f"needs ({need}, from --seq-len {config.train.seq_len}); give more text or "
            f"lower --seq-len"
        )
    train = data.split("train")
    # piece by piece, stopping at the first other character: a memory-mapped corpus stays on disk
    if not any(
        (np.asarray(train[i : i + (1 << 20)]) != train[0]).any()
        for i in range(0, len(train), 1 << 20)
    ):
        raise UserError(
            "the training text has only one distinct character; a model needs at least two"
        )


def _trainer(
    config: RunConfig,
    data: TokenData,
    folder: RunFolder,
    record: dict[str, Any],
    *,
    resume: bool,
    quiet: bool,
    log: TextIO | None,
    dist: distributed.Dist,
) -> Trainer:
    """The trainer for this rank, computing in the precisions that rank 0 recorded."""
    _say_choices(record, config, log, quiet or not dist.is_main)
    return Trainer(
        config,
        data,
        folder,
        precision=record["train_precision"]["value"],
        eval_precision=record["eval_precision"]["value"],
        resume=resume,
        quiet=quiet,
        log=log,
        dist=dist,
    )


def launch(
    inputs: Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    *,
    resume: str | os.PathLike | None = None,
    force: bool = False,
    quiet: bool = False,
    command: str = "",
    log: TextIO | None = None,
    options: dict[str, Any] | None = None,
) -> TrainResult:
    """Everything `nextchar train` does: settle the config, prepare data and folder, train."""
    options = dict(options or {})
    for flag, path in (("--out", out), ("--resume", resume)):
        if path is not None and not str(path).strip():
            raise UserError(f"{flag} is empty (an unset shell variable?); name a folder")
    if resume is None:
        return _new_run(
            list(inputs) if inputs else ["tinyshakespeare"],
            out,
            options,
            force=force,
            quiet=quiet,
            command=command,
            log=log,
        )
    if out is not None or force:
        raise UserError(
            "--resume continues the run in its own folder; give no --out or --force with it"
        )
    if inputs:
        raise UserError(
            "--resume continues a run on the data it was trained on; give no INPUT with it"
        )
    return _resumed_run(RunFolder(resume), options, quiet=quiet, log=log)


def _resumed_run(
    folder: RunFolder, options: dict[str, Any], *, quiet: bool, log: TextIO | None
) -> TrainResult:
    saved = folder.read_config()
    # the model and data are the run's; the random state comes from the checkpoint
    fixed = sorted(
        k for k in options if k not in TRAIN_FIELDS - {"seed"} and options[k] is not None
    )
    if fixed:
        flags = ", ".join("--" + k.replace("_", "-") for k in fixed)
        raise UserError(
            f"cannot change {flags} when resuming; only training options "
            f"(--steps, --time, --lr, ...) may change"
        )
    if not folder.file(LATEST).exists():
        raise UserError(f"{folder.path} has no resumable checkpoint ({LATEST})")
    config = RunConfig(saved.data, saved.model, TrainConfig(**{**to_dict(saved.train), **options}))
    dist = distributed.setup(resolve_device(config.train.device).type)
    device = _compute_device(config, dist)
    data = folder.split_data(config)
    with folder.lock("resuming") if dist.is_main else contextlib.nullcontext():
        if dist.is_main:
            folder.remove_stray_temps()  # of writes a crash cut short
        record = dist.share(_resumed_choices(folder, config, device) if dist.is_main else None)
        trainer = _trainer(
            config, data, folder, record, resume=True, quiet=quiet, log=log, dist=dist
        )  # every rank computes as rank 0 decided
        if dist.is_main:  # only once the checkpoint accepted them
            folder.write_machine(record)
            if options:
                folder.write_config(config)
        return trainer.fit()


def _new_run(
    inputs: list[str],
    out: str | os.PathLike | None,
    options: dict[str, Any],
    *,
    force: bool,
    quiet: bool,
    command: str,
    log: TextIO | None,
) -> TrainResult:
    external = len(inputs) == 1 and is_prepared(inputs[0])
    if external:  # a prepared folder's split holds unless the command names another
        val_frac, test_frac = load_prepared(inputs[0]).fractions()
        options = {"val_frac": val_frac, "test_frac": test_frac, **options}
    config = build_config(options)  # validates every option before anything is touched
    folder = RunFolder(out if out is not None else default_out())
    dist = distributed.setup(resolve_device(config.train.device).type)
    device = _compute_device(config, dist)
    lock = contextlib.nullcontext()
    if dist.is_main:
        if not external:
            discover(inputs)  # names missing files before a folder is made
        folder.check_new(inputs, force)
        created = not folder.path.exists()
        folder.create()
        lock = folder.lock("training")  # before anything in the folder is cleared or written
    with lock:
        if dist.is_main:
            _stage_data(
                folder,
                inputs,
                config,
                external=external,
                force=force,
                created=created,
                say=None if quiet else lambda line: print(line, file=log or sys.stderr),
            )
        dist.barrier()
        data = load_prepared(inputs[0] if external else folder.file(DATA))
        data = data.resplit(config.data.val_frac, config.data.test_frac)
        if dist.is_main:  # rank 0 measures and decides; the others read what it wrote
            config = RunConfig(
                config.data, replace(config.model, vocab_size=len(data.vocab)), config.train
            )
            config, record = _settle(options, config, len(data.split("train")), device)
            folder.write_setup(config, data.vocab, command)
            folder.write_machine(record)
            folder.write_source(data.fingerprint, inputs[0] if external else None)
        dist.barrier()
        return _trainer(
            folder.read_config(),
            data,
            folder,
            folder.read_machine(),
            resume=False,
            quiet=quiet,
            log=log,
            dist=dist,
        ).fit()


def _stage_data(
    folder: RunFolder,
    inputs: list[str],
    config: RunConfig,
    *,
    external: bool,
    force: bool,
    created: bool,
    say,
) -> None:
    """Rank 0, holding the folder's lock: prepare the text beside the folder's data and check it
    can train; only then clear the previous run (--force) and move the new data in."""
    staged = temp_path(folder.file(DATA))  # the new data, until it checks out
    try:
        folder.check_new(inputs, force)  # again: no other writer can change it now
        if not external:
            prepare(inputs, staged, config.data, lock=False, say=say)
        _check_trainable(
            load_prepared(inputs[0] if external else staged).resplit(
                config.data.val_frac, config.data.test_frac
            ),
            config,
        )
        folder.clear_previous()  # --force: only now is anything of the old run removed
        if not external:
            shutil.rmtree(folder.file(DATA), ignore_errors=True)
            os.replace(staged, folder.file(DATA))
    except BaseException:  # bad input leaves no half-made run behind, and an old run intact
        shutil.rmtree(staged, ignore_errors=True)
        if created:
            shutil.rmtree(folder.path, ignore_errors=True)
        raise


def default_out() -> Path:
    """runs/<date>-<time>, never an existing folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / stamp
    n = 1
    while path.exists():
        n += 1
        path = Path("runs") / f"{stamp}-{n}"
    return path
