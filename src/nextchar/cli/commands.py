"""What each `nextchar` command does with its parsed flags: build configs, call the library, print."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import sys
import time

from ..config import DataConfig, DynamicConfig, ModelConfig, ServeLimits, TrainConfig
from ..errors import EXIT_OK, UserError
from .options import config_from, options_given
from .parser import PROG


def dynamic_config(args) -> DynamicConfig:
    return config_from(args, DynamicConfig, "dynamic_")


def cmd_hihello(args) -> int:
    from ..config import LessonConfig
    from ..lesson import format_line, train_lesson

    config = config_from(args, LessonConfig)
    for result in train_lesson(config):
        if args.json:
            print(
                json.dumps(
                    {
                        "epoch": result.epoch,
                        "loss": round(result.loss, 6),
                        "predicted": result.predicted,
                    }
                ),
                flush=True,
            )
        else:
            print(format_line(result), flush=True)
    return EXIT_OK


def _finite(value):
    """`value` with every NaN or infinity replaced by None, so that --json output is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def print_json(value, **kwargs) -> None:
    print(json.dumps(_finite(value), allow_nan=False, **kwargs))


def _eval_line(label: str, result) -> str:
    return (
        f"{label}: {result.bits_per_char:.4f} bits/char, {result.nats_per_char:.4f} nats/char, "
        f"perplexity {result.perplexity:.3f}, accuracy {result.accuracy:.2%} over {result.chars:,} chars"
    )


def cmd_train(args) -> int:
    from ..launch import launch

    options = options_given(args, DataConfig, ModelConfig, TrainConfig)  # the rest: build_config
    command = shlex.join([PROG, *sys.argv[1:]])
    started = time.perf_counter()
    result = launch(
        args.inputs,
        args.out,
        resume=args.resume,
        force=args.force,
        quiet=args.quiet,
        command=command,
        options=options,
    )
    if args.json:
        print_json(
            {
                "run": str(result.folder),
                "steps": result.steps,
                "elapsed": round(result.elapsed, 2),
                "chars_seen": result.chars_seen,
                "stop": result.stop_reason,
                "val": result.best_val.to_dict() if result.best_val else None,
                "test": result.test.to_dict() if result.test else None,
                "sample": result.sample,
            }
        )
        return EXIT_OK
    if not args.quiet:
        err = sys.stderr
        print(
            f"done: {result.steps} steps in {time.perf_counter() - started:.0f}s, run folder "
            f"{result.folder}",
            file=err,
        )
        if result.best_val:
            print("best " + _eval_line("val", result.best_val), file=err)
        if result.test:
            print(_eval_line("test", result.test), file=err)
        print(f"sample it: {sample_hint(result.folder)}", file=err)
        if result.sample:
            print(result.sample)
    return EXIT_OK


def sample_hint(folder) -> str:
    """A `nextchar sample` command for a finished run, primed with the first word of its training
    text, so that every character of the prime is in the vocabulary (whatever the script)."""
    from ..runfolder import RunFolder

    command = [PROG, "sample", str(folder)]
    try:
        start = RunFolder(folder).training_data().text("train", 400)
    except UserError:  # the data moved away: no prime rather than a wrong one
        start = ""
    line = next((line.strip() for line in start.splitlines() if line.strip()), "")
    prime = line.split()[0][:12] if line else ""
    if prime:
        command += ["--prime", prime]
    return shlex.join(command + ["--temperature", "0.8"])


def cmd_prepare(args) -> int:
    from pathlib import Path

    from ..data import prepare

    config = config_from(args, DataConfig)
    if not args.out.strip():
        raise UserError("--out is empty (an unset shell variable?); name a folder")
    out = Path(args.out)
    started = time.perf_counter()
    prepare(
        args.inputs,
        out,
        config,
        force=args.force,
        say=None if args.quiet else lambda line: print(line, file=sys.stderr),
    )
    meta = json.loads((out / "data.json").read_text())
    if not args.quiet:
        print(
            f"prepared {meta['length']:,} chars ({meta['dtype']}) from {len(meta['sources'])} file(s) "
            f"into {out} in {time.perf_counter() - started:.1f}s",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_eval(args) -> int:
    from ..api import load
    from ..corpus import read_text
    from ..devices import resolve_device
    from ..runfolder import RunFolder

    dynamic = dynamic_config(args) if args.dynamic else None  # checked before any work
    model = load(args.run, args.checkpoint, str(resolve_device(args.device)))
    if args.texts:
        text = read_text(args.texts, args.encoding, args.errors)
        if len(text) < 2:
            raise UserError("the text to evaluate needs at least two characters")
        result = model.evaluate(text, args.precision)
        label = ", ".join(args.texts)
        if result.chars == 0:
            from ..vocab import describe_chars

            raise UserError(
                f"nothing to score in {label}: fewer than two of its characters are in "
                f"the model's vocabulary (outside it: "
                f"{describe_chars(result.unknown_symbols)})"
            )
        adapted = model.evaluate(text, dynamic=dynamic) if dynamic else None
    else:
        config = model.config
        data = RunFolder(args.run).split_data(config)
        ids = data.split(args.split)
        if len(ids) < 2:
            raise UserError(f"the run's {args.split} split is empty; pass a TEXT file to score")
        result = model.evaluate_ids(ids, args.precision)
        adapted = model.evaluate_ids(ids, dynamic=dynamic) if dynamic else None
        label = f"{args.split} split"
    _print_eval(args, label, result, adapted, dynamic)
    return EXIT_OK


def _print_eval(args, label: str, result, adapted, dynamic) -> None:
    """eval's answer: one JSON object with --json, else a line each for static and dynamic."""
    from ..vocab import describe_chars

    if args.json:
        extra = {}
        if adapted:
            how = {"lr": dynamic.lr, "decay": dynamic.decay, "window": dynamic.window}
            extra = {"dynamic": {**adapted.to_dict(), **how}}
        print_json({"run": args.run, "text": label, **result.to_dict(), **extra})
        return
    print(_eval_line(label, result))
    if adapted:
        how = f"lr {dynamic.lr:g}, decay {dynamic.decay:g}, window {dynamic.window}"
        print(_eval_line(f"{label}, dynamic ({how})", adapted))
    if result.unknown_chars:
        print(
            f"{result.unknown_chars:,} chars outside the vocabulary were not scored: "
            f"{describe_chars(result.unknown_symbols)}"
        )


def cmd_sample(args) -> int:
    from ..api import load
    from ..devices import resolve_device
    from ..output import SampleWriter
    from ..runfolder import RunFolder

    adapt = dynamic_config(args) if args.adapt else None  # checked before any work
    model = load(args.run, args.checkpoint, str(resolve_device(args.device)))
    RunFolder(args.run).check_data()
    if adapt and (sys.stderr.isatty() or os.environ.get("NEXTCHAR_PROGRESS") == "1"):
        say_line(
            f"adapting a copy of the model to the prime's {len(args.prime):,} characters "
            f"(lr {adapt.lr:g}, decay {adapt.decay:g}, window {adapt.window})"
        )
    writer = SampleWriter(
        sys.stdout, args.num_samples, args.json, on_start=lambda: _say_drawing(args)
    )
    previous = signal.signal(signal.SIGINT, writer.on_sigint)
    try:
        model.generate(
            args.prime,
            args.length,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            greedy=args.greedy,
            seed=args.seed,
            unknown=args.unknown,
            num_samples=args.num_samples,
            precision=args.weights,
            on_text=writer.add,
            adapt=adapt,
        )
    except KeyboardInterrupt:  # what was drawn before the Ctrl-C is written too
        writer.finish(interrupted=True)
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    writer.finish()
    return EXIT_OK


def _say_drawing(args) -> None:
    """When the samples are held back until the end (JSON, or samples after the first), say that
    drawing has begun, on a terminal (or with NEXTCHAR_PROGRESS=1)."""
    if not (args.json or args.num_samples > 1):
        return
    if sys.stderr.isatty() or os.environ.get("NEXTCHAR_PROGRESS") == "1":
        say_line(
            f"drawing {args.num_samples} x {args.length:,} characters; Ctrl-C stops and "
            f"prints what was drawn"
        )


def cmd_plot(args) -> int:
    from ..plot import plot_runs
    from ..runfolder import check_output_file

    if args.out is not None:
        check_output_file(args.out, "--out")  # before the work, not after

    path = plot_runs(args.runs, args.out, args.labels)
    print(f"wrote {path}", file=sys.stderr)
    return EXIT_OK


def cmd_report(args) -> int:
    from ..report import write_report

    if args.chars < 2:
        raise UserError(f"--chars must be at least 2, got {args.chars}")
    if args.out is not None:
        from ..runfolder import check_output_file

        check_output_file(args.out, "--out")  # before the work, not after
    started = time.perf_counter()
    path = write_report(args.run, args.text, args.out, args.chars)
    print(
        f"wrote {path} in {time.perf_counter() - started:.1f}s; open it in a browser",
        file=sys.stderr,
    )
    return EXIT_OK


def say_line(line: str) -> None:
    """One whole line in one write: ranks of a torchrun job share stderr, and `print`'s two writes
    (text, then newline) can interleave with another rank's."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def cmd_serve(args) -> int:
    from ..devices import resolve_device
    from ..serve import serve

    limits = config_from(args, ServeLimits)
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}")
    serve(
        args.runs,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        allow_public=args.allow_public,
        limits=limits,
        precision=args.weights,
        checkpoint=args.checkpoint,
        device=str(resolve_device(args.device)),
        access_log=not args.quiet,
    )
    return EXIT_OK


def cmd_export(args) -> int:
    from ..export import export_onnx
    from ..runfolder import check_output_file

    check_output_file(args.out, "--out")  # before the work, not after
    path, size = export_onnx(args.run, args.out, args.checkpoint)
    print(f"wrote {path} ({size / 1e6:.1f} MB)", file=sys.stderr)
    return EXIT_OK


COMMANDS = {
    "hihello": cmd_hihello,
    "train": cmd_train,
    "prepare": cmd_prepare,
    "eval": cmd_eval,
    "sample": cmd_sample,
    "plot": cmd_plot,
    "report": cmd_report,
    "serve": cmd_serve,
    "export": cmd_export,
}
