"""`nextchar` command line: parse flags, build configs, call the library. Nothing imports this.

Data (samples, --json results) goes to stdout; progress and messages to stderr. Exit codes:
0 success, 2 usage or input error, 1 internal failure (130/143 after SIGINT/SIGTERM, with a
resumable checkpoint saved).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import sys
import time

from .config import AVERAGES, SCHEDULES, DynamicConfig, parse_duration
from .errors import Diverged, Interrupted, PeerFailure, UserError

PROG = "nextchar"


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line and exits 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def duration(text: str) -> float:
    try:
        return parse_duration(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--time ", "")) from None


def steps_or_duration(text: str) -> tuple[str, float]:
    """'500' -> steps; '10m', '90s' -> seconds."""
    text = text.strip()
    if text.isdigit():
        return ("steps", float(int(text)))
    return ("seconds", duration(text))


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data")
    d.add_argument("--val-frac", type=float, help="fraction of the text for validation (default 0.05)")
    d.add_argument("--test-frac", type=float, help="fraction of the text for the test split (default 0.05)")
    d.add_argument("--encoding", help="text encoding of the input files (default utf-8)")
    d.add_argument("--errors", choices=["strict", "replace"],
                   help="undecodable bytes: strict refuses the file, replace substitutes U+FFFD")
    m = p.add_argument_group("model (defaults adapt to --time; see BENCHMARKS.md)")
    m.add_argument("--cell", choices=["lstm", "gru", "rnn", "rnn-relu"])
    m.add_argument("--layers", type=int)
    m.add_argument("--hidden", type=int, help="hidden units per layer")
    m.add_argument("--embed", type=int, help="embedding size; 0 = one-hot input")
    m.add_argument("--dropout", type=float, help="dropout on each recurrent layer's output (between layers, before the head)")
    m.add_argument("--locked-dropout", action=argparse.BooleanOptionalAction, default=None,
                   help="--dropout's mask the same at every time step of a window (variational "
                        "dropout; off by default)")
    m.add_argument("--weight-drop", type=float, metavar="P",
                   help="DropConnect: drop this fraction of the hidden-to-hidden weights, one mask "
                        "per window (default 0)")
    m.add_argument("--embed-drop", type=float, metavar="P",
                   help="drop this fraction of the characters (whole rows of the embedding table), "
                        "one mask per window (default 0)")
    t = p.add_argument_group("training")
    t.add_argument("--batch-size", type=int, help="parallel streams B")
    t.add_argument("--seq-len", type=int, help="window length T (truncated BPTT)")
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--schedule", choices=SCHEDULES,
                   help="after warmup: wsd (default: full lr, then linear decay over the last 20%%), "
                        "cosine, linear or constant")
    t.add_argument("--final-lr-frac", type=float, help="the schedule ends at lr x this (default 0.05)")
    t.add_argument("--warmup-steps", type=int)
    t.add_argument("--optimizer", choices=["adamw", "adam"])
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--grad-clip", type=float, help="max gradient norm; 0 = off (default 1.0)")
    t.add_argument("--steps", type=int, help="stop after N steps")
    t.add_argument("--epochs", type=float, help="stop after N passes over the training split")
    t.add_argument("--time", type=duration, help="stop after a wall-clock budget: 90s, 3m, 1h "
                                                 "(default 3m when no stop is given)")
    t.add_argument("--eval-every", type=int, help="steps between evaluations (default: about 10 per run)")
    t.add_argument("--eval-chars", type=int, help="score at most the first N chars of the val (and test) split per evaluation; "
                                                     "0 = the whole split (default 2,000,000)")
    t.add_argument("--checkpoint-every", type=steps_or_duration,
                   help="resumable checkpoint every N steps or a duration such as 10m (default 2m)")
    t.add_argument("--sample-chars", type=int, help="length of the sample shown at each evaluation")
    t.add_argument("--log-every", type=int, help="steps between metrics.jsonl lines")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    t.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="bf16 autocast (weights stay fp32); auto (default) = the faster of the two, "
                        "timed here on the run's shapes in about a second and cached")
    t.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: its own choice)")
    t.add_argument("--average", choices=AVERAGES,
                   help="evaluate, keep and sample averaged weights: ema (moving average), swa "
                        "(plain mean) or none (default)")
    t.add_argument("--average-start", type=float, metavar="FRACTION",
                   help="the share of the run after which averaging starts (default 0.5)")
    t.add_argument("--average-decay", type=float, metavar="D",
                   help="ema: a step's weight shrinks by D with every later step, so about "
                        "1/(1-D) steps count (default 0.999)")
    t.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (off by default; pays off on GPUs, for long runs)")


DYNAMIC = DynamicConfig()  # the defaults of eval --dynamic


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description="Character-level RNN / LSTM / GRU language models: "
                    "learn, train on any text, measure bits per character, sample.")
    parser.add_argument("--version", action="version", version=f"{PROG} 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("hihello", help="the classic lesson: teach an RNN 'hihell' -> 'ihello'",
                       description="Train the lesson's tiny RNN and print its prediction every epoch.")
    p.add_argument("--text", default="hihello", help="the word to learn (input text[:-1], target text[1:])")
    p.add_argument("--cell", default="rnn", choices=["rnn", "lstm", "gru"])
    p.add_argument("--feed", default="char", choices=["char", "sequence"],
                   help="one character at a time (as the lesson) or the whole sequence in one call")
    p.add_argument("--embed", type=int, default=0, help="embedding size (0 = one-hot, the lesson)")
    p.add_argument("--hidden", type=int, default=0, help="hidden size with a linear head (0 = the lesson)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true", help="one JSON object per epoch")

    p = sub.add_parser("train", help="train a model on text files (default: the bundled tinyshakespeare)",
                       description="Train a character model. INPUT: text files, directories of them, "
                       "a folder made by `nextchar prepare`, or nothing for the bundled corpus.")
    p.add_argument("inputs", nargs="*", metavar="INPUT")
    p.add_argument("--out", help="run folder (default runs/<date>-<time>)")
    p.add_argument("--force", action="store_true",
                   help="replace the nextchar run already in --out (never anything else)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN where it stopped")
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    _add_train_flags(p)

    p = sub.add_parser("prepare", help="encode text once into a memory-mapped data folder",
                       description="Encode text files into a data folder (tokens.bin, vocab.json, "
                       "data.json) that `nextchar train DATA` reads without loading it into memory.")
    p.add_argument("inputs", nargs="+", metavar="TEXT")
    p.add_argument("--out", required=True, metavar="DATA")
    p.add_argument("--force", action="store_true",
                   help="replace a data folder that nextchar prepared (never anything else)")
    p.add_argument("--quiet", action="store_true", help="no messages (such as the files skipped)")
    p.add_argument("--val-frac", type=float, default=0.05)
    p.add_argument("--test-frac", type=float, default=0.05)
    p.add_argument("--encoding", default="utf-8")
    p.add_argument("--errors", default="strict", choices=["strict", "replace"])

    p = sub.add_parser("eval", help="bits per char, perplexity and accuracy of a run on text",
                       description="Score text with a trained model, streamed with carried state. "
                       "Characters outside the vocabulary are not scored; they are counted and reported.")
    p.add_argument("run", metavar="RUN")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="files to score (default: the run's --split)")
    p.add_argument("--split", default="val", choices=["val", "test", "train"])
    p.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    p.add_argument("--encoding", default="utf-8")
    p.add_argument("--errors", default="strict", choices=["strict", "replace"])
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="arithmetic of the scoring (default: the run's setting; auto = the faster "
                        "of fp32 and bf16, timed here)")
    p.add_argument("--dynamic", action="store_true",
                   help="also score with dynamic evaluation: the model keeps learning from the text "
                   "it has scored (one SGD step per window, on a copy; the run is not changed)")
    p.add_argument("--dynamic-lr", type=float, default=DYNAMIC.lr,
                   help=f"dynamic evaluation's step size (default {DYNAMIC.lr})")
    p.add_argument("--dynamic-decay", type=float, default=DYNAMIC.decay,
                   help=f"pull towards the trained weights per step (default {DYNAMIC.decay})")
    p.add_argument("--dynamic-window", type=int, default=DYNAMIC.window,
                   help=f"characters per step (default {DYNAMIC.window})")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("sample", help="generate text from a run",
                       description="Stream generated characters to stdout, one recurrence step each.")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--prime", default="", help="text to start from (printed first)")
    p.add_argument("--length", type=int, default=500, help="characters to generate")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None, help="sample from the K most likely (default: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--greedy", action="store_true", help="always the most likely character")
    p.add_argument("--num-samples", type=int, default=1, help="independent samples drawn in parallel")
    p.add_argument("--seed", type=int, default=None, help="same seed, same text")
    p.add_argument("--unknown", default="error", choices=["error", "skip"],
                   help="prime characters outside the vocabulary: refuse (default) or drop")
    p.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8"],
                   help="weights while stepping: fp32 is exact; int8 (one scale per row) and bf16 "
                   "read fewer bytes; auto = the fastest for this model and --num-samples, timed "
                   "here in a fraction of a second and cached")
    p.add_argument("--json", action="store_true", help='print {"samples": [...]} instead of streaming')

    p = sub.add_parser("plot", help="train and validation bits/char curves of one or more runs",
                       description="Plot train and val bits/char against characters seen and wall time; "
                       "several runs are overlaid, labelled from their configs.")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--out", metavar="FILE.png", help="image to write (default RUN/curves.png)")
    p.add_argument("--labels", nargs="+", metavar="LABEL", help="one label per run")

    p = sub.add_parser("report", help="a self-contained HTML report of a run",
                       description="Write RUN/report.html: summary, curves, samples, a surprisal view "
                       "and a neuron view of a passage of text (no network needed to open it).")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--text", metavar="FILE", help="passage to show (default: the run's validation text)")
    p.add_argument("--chars", type=int, default=2000, help="length of the passage (default 2000)")
    p.add_argument("--out", metavar="FILE.html", help="where to write (default RUN/report.html)")
    _add_serving_parsers(sub)
    return parser


TRAIN_OPTION_FLAGS = ("val_frac", "test_frac", "encoding", "errors", "cell", "layers", "hidden", "embed",
                      "dropout", "locked_dropout", "weight_drop", "embed_drop", "batch_size", "seq_len",
                      "lr", "schedule", "final_lr_frac", "warmup_steps", "optimizer", "weight_decay",
                      "grad_clip", "steps", "epochs", "time", "eval_every", "eval_chars", "sample_chars",
                      "log_every", "seed", "device", "threads", "precision", "compile", "average",
                      "average_start", "average_decay")


def cmd_hihello(args) -> int:
    from .lesson import LessonConfig, format_line, train_lesson

    options = {k: getattr(args, k) for k in ("text", "cell", "feed", "embed", "hidden", "epochs", "lr")}
    if args.seed is not None:
        options["seed"] = args.seed
    config = LessonConfig(**options)
    for result in train_lesson(config):
        if args.json:
            print(json.dumps({"epoch": result.epoch, "loss": round(result.loss, 6),
                              "predicted": result.predicted}), flush=True)
        else:
            print(format_line(result), flush=True)
    return 0


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
    return (f"{label}: {result.bits_per_char:.4f} bits/char, {result.nats_per_char:.4f} nats/char, "
            f"perplexity {result.perplexity:.3f}, accuracy {result.accuracy:.2%} over {result.chars:,} chars")


def cmd_train(args) -> int:
    from .launch import launch

    options = {k: getattr(args, k) for k in TRAIN_OPTION_FLAGS if getattr(args, k) is not None}
    if args.checkpoint_every is not None:
        kind, value = args.checkpoint_every
        if kind == "steps":
            options["checkpoint_every_steps"] = int(value)
            options["checkpoint_every"] = 0.0
        else:
            options["checkpoint_every"] = value
    command = shlex.join([PROG, *sys.argv[1:]])
    started = time.perf_counter()
    result = launch(args.inputs, args.out, resume=args.resume, force=args.force, quiet=args.quiet,
                    command=command, options=options)
    if args.json:
        print_json({"run": str(result.folder), "steps": result.steps,
                    "elapsed": round(result.elapsed, 2), "chars_seen": result.chars_seen,
                    "stop": result.stop_reason,
                    "val": result.best_val.to_dict() if result.best_val else None,
                    "test": result.test.to_dict() if result.test else None,
                    "sample": result.sample})
        return 0
    if not args.quiet:
        err = sys.stderr
        print(f"done: {result.steps} steps in {time.perf_counter() - started:.0f}s, run folder "
              f"{result.folder}", file=err)
        if result.best_val:
            print("best " + _eval_line("val", result.best_val), file=err)
        if result.test:
            print(_eval_line("test", result.test), file=err)
        print(f"sample it: {sample_hint(result.folder)}", file=err)
        if result.sample:
            print(result.sample)
    return 0


def sample_hint(folder) -> str:
    """A `nextchar sample` command for a finished run, primed with the first word of its training
    text, so that every character of the prime is in the vocabulary (whatever the script)."""
    from .runfolder import RunFolder

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

    from .config import DataConfig
    from .data import prepare

    config = DataConfig(val_frac=args.val_frac, test_frac=args.test_frac, encoding=args.encoding,
                        errors=args.errors)
    if not args.out.strip():
        raise UserError("--out is empty (an unset shell variable?); name a folder")
    out = Path(args.out)
    started = time.perf_counter()
    prepare(args.inputs, out, config, force=args.force,
            say=None if args.quiet else lambda line: print(line, file=sys.stderr))
    meta = json.loads((out / "data.json").read_text())
    if not args.quiet:
        print(f"prepared {meta['length']:,} chars ({meta['dtype']}) from {len(meta['sources'])} file(s) "
              f"into {out} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    from .api import load
    from .corpus import read_text
    from .devices import resolve_device
    from .runfolder import RunFolder

    dynamic = (DynamicConfig(args.dynamic_lr, args.dynamic_decay, args.dynamic_window)
               if args.dynamic else None)  # checked before any work
    model = load(args.run, args.checkpoint, str(resolve_device(args.device)))
    if args.texts:
        text = read_text(args.texts, args.encoding, args.errors)
        if len(text) < 2:
            raise UserError("the text to evaluate needs at least two characters")
        result = model.evaluate(text, args.precision)
        label = ", ".join(args.texts)
        if result.chars == 0:
            from .vocab import describe_chars

            raise UserError(f"nothing to score in {label}: fewer than two of its characters are in "
                            f"the model's vocabulary (outside it: "
                            f"{describe_chars(result.unknown_symbols)})")
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
    if args.json:
        extra = {"dynamic": {**adapted.to_dict(), "lr": dynamic.lr, "decay": dynamic.decay,
                             "window": dynamic.window}} if adapted else {}
        print_json({"run": args.run, "text": label, **result.to_dict(), **extra})
    else:
        print(_eval_line(label, result))
        if adapted:
            print(_eval_line(f"{label}, dynamic (lr {dynamic.lr:g}, decay {dynamic.decay:g}, "
                             f"window {dynamic.window})", adapted))
        if result.unknown_chars:
            from .vocab import describe_chars

            print(f"{result.unknown_chars:,} chars outside the vocabulary were not scored: "
                  f"{describe_chars(result.unknown_symbols)}")
    return 0


def cmd_sample(args) -> int:
    from .api import load
    from .devices import resolve_device
    from .output import SampleWriter
    from .runfolder import RunFolder

    model = load(args.run, args.checkpoint, str(resolve_device(args.device)))
    RunFolder(args.run).check_data()
    writer = SampleWriter(sys.stdout, args.num_samples, args.json, on_start=lambda: _say_drawing(args))
    previous = signal.signal(signal.SIGINT, writer.on_sigint)
    try:
        model.generate(args.prime, args.length, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, greedy=args.greedy, seed=args.seed, unknown=args.unknown,
                       num_samples=args.num_samples, precision=args.precision, on_text=writer.add)
    except KeyboardInterrupt:  # what was drawn before the Ctrl-C is written too
        writer.finish(interrupted=True)
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    writer.finish()
    return 0


def _say_drawing(args) -> None:
    """When the samples are held back until the end (JSON, or samples after the first), say that
    drawing has begun, on a terminal (or with NEXTCHAR_PROGRESS=1)."""
    if not (args.json or args.num_samples > 1):
        return
    if sys.stderr.isatty() or os.environ.get("NEXTCHAR_PROGRESS") == "1":
        say_line(f"drawing {args.num_samples} x {args.length:,} characters; Ctrl-C stops and "
                 f"prints what was drawn")


def cmd_plot(args) -> int:
    from .plot import plot_runs
    from .runfolder import check_output_file

    if args.out is not None:
        check_output_file(args.out, "--out")  # before the work, not after

    path = plot_runs(args.runs, args.out, args.labels)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    if args.chars < 2:
        raise UserError(f"--chars must be at least 2, got {args.chars}")
    if args.out is not None:
        from .runfolder import check_output_file

        check_output_file(args.out, "--out")  # before the work, not after
    started = time.perf_counter()
    path = write_report(args.run, args.text, args.out, args.chars)
    print(f"wrote {path} in {time.perf_counter() - started:.1f}s; open it in a browser", file=sys.stderr)
    return 0


COMMANDS = {"hihello": cmd_hihello, "train": cmd_train, "prepare": cmd_prepare, "eval": cmd_eval,
            "sample": cmd_sample, "plot": cmd_plot, "report": cmd_report}


def say_line(line: str) -> None:
    """One whole line in one write: ranks of a torchrun job share stderr, and `print`'s two writes
    (text, then newline) can interleave with another rank's."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def leave(code: int) -> None:
    """Exit with `code`. A torchrun worker skips interpreter teardown once its output is flushed:
    the process group is already destroyed, yet gloo's threads could still abort the exit
    ("terminate called without an active exception", exit -6): 3 of 12 torchrun tests here."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or broken pipe: nothing more to say
                pass
        os._exit(code)
    sys.exit(code)


STDOUT_COMMANDS = ("hihello", "eval", "sample")  # their product is what they print


def main(argv: list[str] | None = None) -> None:
    from .output import StdoutFailed, replaced_note, setup_streams

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        sys.exit(2)
    try:
        setup_streams(args.command in STDOUT_COMMANDS or getattr(args, "json", False), args.command)
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a failing write shows here, not in the interpreter's teardown
    except UserError as exc:
        say_line(f"{PROG} {args.command}: error: {exc}")
        leave(2)
    except Interrupted as exc:
        say_line(f"{PROG} {args.command}: {exc}")
        leave(128 + exc.signum)
    except (Diverged, PeerFailure) as exc:
        say_line(f"{PROG} {args.command}: error: {exc}")
        leave(1)
    except KeyboardInterrupt:
        say_line(f"{PROG} {args.command}: interrupted")
        leave(130)
    except BrokenPipeError:
        _discard_stdout()
        sys.stderr.close()  # the reader went away (e.g. `| head`): not an error
        leave(0)
    except StdoutFailed as exc:
        _discard_stdout()
        say_line(f"{PROG} {args.command}: error: cannot write to standard output: {exc}")
        leave(1)
    note = replaced_note()
    if note:
        say_line(note)
    leave(code)


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the text it could not take is not retried at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


# ---- serve and export (issue 13): their parsers and commands, kept together --------------------

def _add_serving_parsers(sub) -> None:
    from .config import ServeLimits

    limits = ServeLimits()
    p = sub.add_parser("serve", help="an HTTP API and a web page for trained runs",
                       description="Serve runs over HTTP: POST /v1/generate (JSON or server-sent "
                       "events), POST /v1/score, GET /v1/models, GET /healthz, and a page at /. "
                       "Concurrent requests share one batched step. See docs/serving.md.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders; NAME=RUN to name one "
                   "(default: the folder's name); the first is the default model")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any "
                   "other needs --api-key or --allow-public)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--api-key", default=os.environ.get("NEXTCHAR_API_KEY"), metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1/ (default: $NEXTCHAR_API_KEY)")
    p.add_argument("--allow-public", action="store_true",
                   help="bind a non-loopback --host with no API key")
    p.add_argument("--max-length", type=int, default=limits.max_length,
                   help=f"characters generated per sample (default {limits.max_length})")
    p.add_argument("--max-text", type=int, default=limits.max_text,
                   help=f"characters of a prime or of a text to score (default {limits.max_text})")
    p.add_argument("--max-streams", type=int, default=limits.max_streams,
                   help=f"samples generated at once per model (default {limits.max_streams})")
    p.add_argument("--max-body", type=int, default=limits.max_body,
                   help=f"bytes of a request body (default {limits.max_body})")
    p.add_argument("--request-timeout", type=duration, default=limits.request_timeout,
                   help=f"a request's longest life: 90s, 5m (default {limits.request_timeout:g}s)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8"],
                   help="weights while stepping, as in `sample`; auto = the fastest for 64 streams")
    p.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--quiet", action="store_true", help="no line per request on stderr")

    p = sub.add_parser("export", help="write a run's model as an ONNX file",
                       description="Write the model as one ONNX graph: ids (batch, time) and state "
                       "in, logits, state and each character's bits out; one character at a time "
                       "it is the sampling step, a whole text at once the scorer. The vocabulary "
                       "and config are in its metadata. See docs/serving.md.")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--out", required=True, metavar="FILE.onnx")
    p.add_argument("--checkpoint", default="best", choices=["best", "latest"])


def cmd_serve(args) -> int:
    from .config import ServeLimits
    from .devices import resolve_device
    from .serve import serve

    limits = ServeLimits(max_length=args.max_length, max_text=args.max_text,
                         max_streams=args.max_streams, max_body=args.max_body,
                         request_timeout=args.request_timeout)
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}")
    serve(args.runs, host=args.host, port=args.port, api_key=args.api_key,
          allow_public=args.allow_public, limits=limits, precision=args.precision,
          checkpoint=args.checkpoint, device=str(resolve_device(args.device)),
          access_log=not args.quiet)
    return 0


def cmd_export(args) -> int:
    from .export import export_onnx
    from .runfolder import check_output_file

    check_output_file(args.out, "--out")  # before the work, not after
    path, size = export_onnx(args.run, args.out, args.checkpoint)
    print(f"wrote {path} ({size / 1e6:.1f} MB)", file=sys.stderr)
    return 0


COMMANDS.update(serve=cmd_serve, export=cmd_export)

# ---- end of serve and export ------------------------------------------------------------------
