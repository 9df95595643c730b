"""`nextchar export RUN --format onnx --out FILE`: the model as one ONNX graph, to run wherever
onnxruntime runs, with no Python or PyTorch needed.

    inputs   ids     int64 (batch, time)        character ids (vocabulary below)
             h       float (layers, batch, hidden)   state carried in; zeros to start
             c       float (layers, batch, hidden)   the LSTM cell state (LSTM only)
    outputs  logits  float (batch, time, vocab)  scores of the next character after each id
             h_out   float (layers, batch, hidden)   the state after the last id
             c_out   float (layers, batch, hidden)   (LSTM only)
             bits    float (batch, time - 1)     bits paid for ids[:, 1:], each given those before

Fed one id per stream (time = 1) and its state carried, it is the sampling step; fed a whole
text from a zero state, it is the scorer, `bits` being the report's surprisal. Batch and time are
dynamic. The metadata (`metadata_props`) holds the vocabulary ("nextchar.vocab": JSON symbols,
id i is symbols[i]), the run's config ("nextchar.config"), the checkpoint's step and this
layout's version ("nextchar.format").

The graph is written with ONNX's own operators (opset 17): a Gather (embedding) or OneHot input,
one LSTM / GRU / RNN operator per layer, and the linear head. PyTorch and ONNX order the gate
blocks differently: PyTorch's LSTM is i f g o and ONNX's i o f c; PyTorch's GRU is r z n and
ONNX's z r h, with `linear_before_reset` = 1 for PyTorch's n = tanh(W x + b + r * (U h + c)).
tests/test_export.py holds it to PyTorch under onnxruntime.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import UserError
from .model import CharRNN
from .runfolder import atomic_write, load_model
from .vocab import Vocab

FORMAT = 1  # of the layout above; raised when inputs, outputs or metadata change
OPSET = 17
PROTOBUF_LIMIT = (1 << 31) - 1  # one ONNX file without external data holds at most 2 GB
# PyTorch's gate blocks in ONNX's order: LSTM i f g o -> i o f c, GRU r z n -> z r h
GATE_ORDER = {"lstm": [0, 3, 1, 2], "gru": [1, 0, 2], "rnn": [0], "rnn-relu": [0]}
OPERATOR = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN", "rnn-relu": "RNN"}


def _blocks(array: np.ndarray, cell: str) -> np.ndarray:
    """Rows of PyTorch's gate blocks (G*H, ...) rearranged into ONNX's order."""
    order = GATE_ORDER[cell]
    return np.concatenate([np.split(array, len(order))[i] for i in order])


class _Graph:
    """The nodes and initializers of an ONNX graph as it is built."""

    def __init__(self) -> None:
        self.initializers: list = []
        self.nodes: list = []

    def const(self, name: str, array) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, kind: str, inputs: list[str], outputs: list[str], **attributes) -> list[str]:
        self.nodes.append(helper.make_node(kind, inputs, outputs, **attributes))
        return outputs


def build_onnx(
    module: CharRNN, vocab: Vocab, metadata: dict[str, str] | None = None
) -> onnx.ModelProto:
    """The ModelProto for `module` (see the module docstring)."""
    cfg = module.config
    weights = {k: v.detach().float().cpu().numpy() for k, v in module.state_dict().items()}
    g = _Graph()
    g.const("axis0", np.array([0], np.int64))
    g.const("axis1", np.array([1], np.int64))
    g.const("axis2", np.array([2], np.int64))
    x = _input(g, weights, module.embed is not None, cfg.vocab_size)
    top = _recurrent_layers(g, weights, x, cfg.cell, cfg.layers, cfg.hidden)
    _head_and_bits(g, weights, top)
    graph = helper.make_graph(
        g.nodes,
        f"nextchar_{cfg.cell}",
        *_signature(cfg),
        g.initializers,
        doc_string="ids (batch, time) and state in; logits, state and bits out",
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="nextchar",
        doc_string="a nextchar character model",
    )
    model.ir_version = 8  # what ONNX Runtime 1.10 and later read
    entries = {
        "nextchar.format": str(FORMAT),
        "nextchar.vocab": json.dumps(vocab.symbols),
        **(metadata or {}),
    }
    helper.set_model_props(model, entries)
    onnx.checker.check_model(model)
    return model


def _input(g: _Graph, weights: dict[str, np.ndarray], embedded: bool, V: int) -> str:
    """ids (B, T) -> the first layer's input, time-major for the recurrent operators (ONNX
    Runtime has no batch-major LSTM): (T, B, E) embedded or (T, B, V) one-hot."""
    g.op("Transpose", ["ids"], ["ids_tb"], perm=[1, 0])  # (T, B)
    if embedded:
        return g.op("Gather", [g.const("embed", weights["embed.weight"]), "ids_tb"], ["x0"])[0]
    return g.op(
        "OneHot",
        [
            "ids_tb",
            g.const("vocab_size", np.array(V, np.int64)),
            g.const("one_hot_values", np.array([0.0, 1.0], np.float32)),
        ],
        ["x0"],
    )[0]


def _recurrent_layers(
    g: _Graph, weights: dict[str, np.ndarray], x: str, cell: str, L: int, H: int
) -> str:
    """One ONNX LSTM / GRU / RNN operator per layer, each reading its slice of the state in and
    giving its final state to h_out (and c_out) -> the top layer's output, (B, T, H)."""
    finals_h, finals_c = [], []
    for k in range(L):
        w = _blocks(weights[f"rnn.weight_ih_l{k}"], cell)[None]  # (1, G*H, in)
        r = _blocks(weights[f"rnn.weight_hh_l{k}"], cell)[None]  # (1, G*H, H)
        b = np.concatenate(
            [
                _blocks(weights[f"rnn.bias_ih_l{k}"], cell),
                _blocks(weights[f"rnn.bias_hh_l{k}"], cell),
            ]
        )[None]  # (1, 2*G*H)
        start = g.const(f"layer{k}", np.array([k], np.int64))
        end = g.const(f"layer{k}_end", np.array([k + 1], np.int64))
        state = [g.op("Slice", ["h", start, end, "axis0"], [f"h{k}"])[0]]  # (1, B, H)
        if cell == "lstm":
            state.append(g.op("Slice", ["c", start, end, "axis0"], [f"c{k}"])[0])
        attributes = {"hidden_size": H}
        if cell == "gru":
            attributes["linear_before_reset"] = 1
        if cell in ("rnn", "rnn-relu"):
            attributes["activations"] = ["Relu" if cell == "rnn-relu" else "Tanh"]
        outputs = [f"y{k}", f"h{k}_out"] + ([f"c{k}_out"] if cell == "lstm" else [])
        g.op(
            OPERATOR[cell],
            [x, g.const(f"W{k}", w), g.const(f"R{k}", r), g.const(f"B{k}", b), ""] + state,
            outputs,
            **attributes,
        )
        x = g.op("Squeeze", [f"y{k}", "axis1"], [f"x{k + 1}"])[0]  # (T, 1, B, H) -> (T, B, H)
        finals_h.append(f"h{k}_out")
        if cell == "lstm":
            finals_c.append(f"c{k}_out")
    g.op("Concat", finals_h, ["h_out"], axis=0)  # (L, B, H)
    if cell == "lstm":
        g.op("Concat", finals_c, ["c_out"], axis=0)
    return g.op("Transpose", [x], ["top"], perm=[1, 0, 2])[0]  # (B, T, H)


def _head_and_bits(g: _Graph, weights: dict[str, np.ndarray], top: str) -> None:
    """The linear head -> logits (B, T, V), and the scorer: the bits of ids[:, 1:] under the
    logits before each -> bits (B, T-1)."""
    g.op(
        "MatMul",
        [top, g.const("head_t", np.ascontiguousarray(weights["head.weight"].T))],
        ["scores"],
    )
    g.op("Add", ["scores", g.const("head_bias", weights["head.bias"])], ["logits"])  # (B, T, V)
    g.op(
        "Slice",
        [
            "logits",
            g.const("zero", np.array([0], np.int64)),
            g.const("minus_one", np.array([-1], np.int64)),
            "axis1",
        ],
        ["before"],
    )  # (B, T-1, V)
    g.op("LogSoftmax", ["before"], ["log_probs"], axis=-1)
    g.op(
        "Slice",
        ["ids", "axis1", g.const("end", np.array([np.iinfo(np.int64).max], np.int64)), "axis1"],
        ["targets"],
    )
    g.op("Unsqueeze", ["targets", "axis2"], ["targets3"])  # (B, T-1, 1)
    g.op("GatherElements", ["log_probs", "targets3"], ["picked"], axis=2)
    g.op("Squeeze", ["picked", "axis2"], ["nats"])
    g.op(
        "Mul",
        ["nats", g.const("minus_bits_per_nat", np.array(-1.0 / math.log(2.0), np.float32))],
        ["bits"],
    )


def _signature(cfg) -> tuple[list, list]:
    """The graph's inputs and outputs, with batch and time dynamic."""
    L, H, V = cfg.layers, cfg.hidden, cfg.vocab_size
    state = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [L, "batch", H])  # noqa: E731
    inputs = [
        helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "time"]),
        state("h"),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "time", V]),
        state("h_out"),
    ]
    if cfg.cell == "lstm":
        inputs.append(state("c"))
        outputs.append(state("c_out"))
    outputs.append(helper.make_tensor_value_info("bits", TensorProto.FLOAT, ["batch", None]))
    return inputs, outputs


def export_onnx(
    run: str | os.PathLike, out: str | os.PathLike, which: str = "best"
) -> tuple[Path, int]:
    """Write the run's model to `out` (atomically); returns the path and its size in bytes."""
    module, vocab, config, meta = load_model(run, which, "cpu")
    metadata = {
        "nextchar.config": config.to_json(),
        "nextchar.checkpoint_step": str(meta.get("step", "")),
    }
    model = build_onnx(module, vocab, metadata)
    size = model.ByteSize()
    if size > PROTOBUF_LIMIT:
        raise UserError(f"the model needs {size / 1e9:.1f} GB; one ONNX file holds at most 2 GB")
    payload = model.SerializeToString()
    atomic_write(out, payload)
    return Path(out), len(payload)


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """An ONNX model's metadata_props as a dict."""
    return {entry.key: entry.value for entry in model.metadata_props}
