"""`nextchar`'s flags, declared apart from what the commands do (commands.py).

The flags of the library's options are made from the config fields (options.py); the rest are
about the command itself (where to write, what to read, how to print).
"""

from __future__ import annotations

import argparse
import os

from .. import __version__
from ..config import (
    CHECKPOINTS,
    DEVICES,
    PRECISIONS,
    WEIGHT_FORMATS,
    DataConfig,
    DynamicConfig,
    LessonConfig,
    ModelConfig,
    SampleConfig,
    ServeLimits,
    TrainConfig,
)
from ..errors import EXIT_USAGE
from ..fields import train_defaults
from .options import Renamed, add_options

PROG = "nextchar"
SPLITS = ("val", "test", "train")
API_KEY_ENV = "NEXTCHAR_API_KEY"


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line and exits 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        description="Character-level RNN / LSTM / GRU language models: "
        "learn, train on any text, measure bits per character, sample.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for add in (_hihello, _train, _prepare, _eval, _sample, _plot, _report, _serve, _export):
        add(sub)
    return parser


def _checkpoint_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="best", choices=CHECKPOINTS)


def _device_flag(p: argparse.ArgumentParser) -> None:
    """Where a reader of a run computes (training's --device is TrainConfig's, default auto)."""
    p.add_argument("--device", default="cpu", choices=DEVICES)


def _weights_flag(p: argparse.ArgumentParser, help: str) -> None:
    """The sampler's weight format, --weights; --precision is its old name here (it means the
    arithmetic of training and scoring in train and eval)."""
    p.add_argument("--weights", default="auto", choices=WEIGHT_FORMATS, help=help)
    p.add_argument(
        "--precision", dest="weights", choices=WEIGHT_FORMATS, action=Renamed, new_name="--weights"
    )


def _hihello(sub) -> None:
    p = sub.add_parser(
        "hihello",
        help="the classic lesson: teach an RNN 'hihell' -> 'ihello'",
        description="Train the lesson's tiny RNN and print its prediction every epoch.",
    )
    add_options(p, LessonConfig)
    p.add_argument("--json", action="store_true", help="one JSON object per epoch")


def _train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on text files (default: the bundled tinyshakespeare)",
        description="Train a character model. INPUT: text files, directories of them, "
        "a folder made by `nextchar prepare`, or nothing for the bundled corpus. "
        "A --time run sizes the model and picks --lr, --dropout and --weight-decay "
        'where you leave them out (BENCHMARKS.md, "The budget rule"); a --steps '
        "or --epochs run keeps the defaults shown.",
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT")
    p.add_argument("--out", help="run folder (default runs/<date>-<time>)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace the nextchar run already in --out (never anything else)",
    )
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN where it stopped")
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    shown = train_defaults(ModelConfig, TrainConfig)
    add_options(p, DataConfig, title="data", fill=False)
    add_options(
        p,
        ModelConfig,
        title="model (defaults adapt to --time; see BENCHMARKS.md)",
        fill=False,
        defaults=shown,
    )
    add_options(p, TrainConfig, title="training", fill=False, defaults=shown)


def _prepare(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="encode text once into a memory-mapped data folder",
        description="Encode text files into a data folder (tokens.bin, vocab.json, "
        "data.json) that `nextchar train DATA` reads without loading it into memory.",
    )
    p.add_argument("inputs", nargs="+", metavar="TEXT")
    p.add_argument("--out", required=True, metavar="DATA")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a data folder that nextchar prepared (never anything else)",
    )
    p.add_argument("--quiet", action="store_true", help="no messages (such as the files skipped)")
    add_options(p, DataConfig)


def _eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="bits per char, perplexity and accuracy of a run on text",
        description="Score text with a trained model, streamed with carried state. "
        "Characters outside the vocabulary are not scored; they are counted and reported.",
    )
    p.add_argument("run", metavar="RUN")
    p.add_argument(
        "texts", nargs="*", metavar="TEXT", help="files to score (default: the run's --split)"
    )
    p.add_argument("--split", default="val", choices=SPLITS)
    _checkpoint_flag(p)
    add_options(p, DataConfig, only=("encoding", "errors"))
    _device_flag(p)
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="arithmetic of the scoring (default: the run's setting; auto = the faster "
        "of fp32 and bf16, timed here)",
    )
    p.add_argument(
        "--dynamic",
        action="store_true",
        help="also score with dynamic evaluation: the model keeps learning from the text "
        "it has scored (one SGD step per window, on a copy; the run is not changed)",
    )
    add_options(p, DynamicConfig, prefix="dynamic_")
    p.add_argument("--json", action="store_true")


def _sample(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="generate text from a run",
        description="Stream generated characters to stdout, one recurrence step each.",
    )
    p.add_argument("run", metavar="RUN")
    add_options(p, SampleConfig)
    _checkpoint_flag(p)
    _device_flag(p)
    _weights_flag(
        p,
        "how the weights are held while stepping: fp32 is exact; int8 (one scale "
        "per row) and bf16 read fewer bytes; auto = the fastest for this model and "
        "--num-samples, timed here in a fraction of a second and cached (default auto)",
    )
    p.add_argument(
        "--adapt",
        action="store_true",
        help="first let a copy of the model learn from the prime as `eval --dynamic` "
        "does (a long prime in a style of its own: names, layout), then sample from it; "
        "the run is not changed",
    )
    add_options(p, DynamicConfig, prefix="dynamic_")
    p.add_argument(
        "--json", action="store_true", help='print {"samples": [...]} instead of streaming'
    )


def _plot(sub) -> None:
    p = sub.add_parser(
        "plot",
        help="train and validation bits/char curves of one or more runs",
        description="Plot train and val bits/char against characters seen and wall time; "
        "several runs are overlaid, labelled from their configs.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--out", metavar="FILE.png", help="image to write (default RUN/curves.png)")
    p.add_argument("--labels", nargs="+", metavar="LABEL", help="one label per run")


def _report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="a self-contained HTML report of a run",
        description="Write RUN/report.html: summary, curves, samples, a surprisal view "
        "and a neuron view of a passage of text (no network needed to open it).",
    )
    p.add_argument("run", metavar="RUN")
    p.add_argument(
        "--text", metavar="FILE", help="passage to show (default: the run's validation text)"
    )
    p.add_argument("--chars", type=int, default=2000, help="length of the passage (default 2000)")
    p.add_argument("--out", metavar="FILE.html", help="where to write (default RUN/report.html)")


def _serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="an HTTP API and a web page for trained runs",
        description="Serve runs over HTTP: POST /v1/generate (JSON or server-sent "
        "events), POST /v1/score, GET /v1/models, GET /healthz, and a page at /. "
        "Concurrent requests share one batched step. See docs/serving.md.",
    )
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="run folders; NAME=RUN to name one "
        "(default: the folder's name); the first is the default model",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; any other needs --api-key or --allow-public)",
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        metavar="KEY",
        help=f"require 'Authorization: Bearer KEY' on /v1/ (default: ${API_KEY_ENV})",
    )
    p.add_argument(
        "--allow-public", action="store_true", help="bind a non-loopback --host with no API key"
    )
    add_options(p, ServeLimits)
    _weights_flag(
        p,
        "how the weights are held while stepping, as in `sample`; auto = the "
        "fastest for 64 streams (default auto)",
    )
    _checkpoint_flag(p)
    _device_flag(p)
    p.add_argument("--quiet", action="store_true", help="no line per request on stderr")


def _export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a run's model as an ONNX file",
        description="Write the model as one ONNX graph: ids (batch, time) and state "
        "in, logits, state and each character's bits out; one character at a time "
        "it is the sampling step, a whole text at once the scorer. The vocabulary "
        "and config are in its metadata. See docs/serving.md.",
    )
    p.add_argument("run", metavar="RUN")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--out", required=True, metavar="FILE.onnx")
    _checkpoint_flag(p)
