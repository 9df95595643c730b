"""What a request to `nextchar serve` may send and how a refusal answers: the request bodies
(strict: 5.0 is not a length, "5" is not a number), the JSON responses, and ApiError, a status
with the field to blame, {"error": {"field": ..., "message": ...}}."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..config import SampleConfig
from ..config import ServeLimits as Limits
from ..errors import UserError
from ..fields import is_option
from ..report.analysis import LN2, Analysis
from ..sample import check_prime
from ..vocab import Vocab

SEED_RANGE = (-(1 << 63), (1 << 64) - 1)  # what torch.Generator.manual_seed accepts


class JSON(JSONResponse):
    """JSON as UTF-8; a text that echoes a lone surrogate (valid in JSON's \\uD800, not in
    UTF-8) is sent with every non-ASCII character escaped instead."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


class ApiError(Exception):
    """A request the service refuses: an HTTP status and the field to blame."""

    def __init__(
        self, status: int, field_name: str | None, message: str, headers: dict | None = None
    ):
        super().__init__(message)
        self.status, self.field, self.message, self.headers = status, field_name, message, headers

    def response(self) -> JSON:
        return JSON(
            {"error": {"field": self.field, "message": self.message}},
            self.status,
            headers=self.headers,
        )


_TYPES = {"str": str, "int": int, "int|None": int | None, "float": float, "bool": bool}


def _option_fields(cls: type) -> dict[str, tuple[Any, Any]]:
    """The option fields of config class `cls` as pydantic fields: name -> (type, default), a
    field with choices as a Literal of them."""
    return {
        f.name: (
            Literal[f.metadata["choices"]]
            if f.metadata["choices"]
            else _TYPES[f.type.replace(" ", "")],
            f.default,
        )
        for f in dataclasses.fields(cls)
        if is_option(f)
    }


# the model (default: the first served), SampleConfig's options with their names, types and
# defaults, and stream
GenerateBody = create_model(
    "GenerateBody",
    __config__=ConfigDict(extra="forbid", strict=True),
    __doc__='POST /v1/generate. Types are strict (5.0 is not a length, "5" is not a number); ranges are\n'
    "SampleConfig's (the same as `nextchar sample`'s flags) and the service's Limits.",
    model=(str | None, None),
    **_option_fields(SampleConfig),
    stream=(bool, False),
)


class ScoreBody(BaseModel):
    """POST /v1/score."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str | None = None
    text: str
    dynamic: bool = False


_EXPECTED = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
}


def _validation_error(exc: ValidationError, schema: type[BaseModel]) -> ApiError:
    """The first problem pydantic found, as an ApiError naming its field."""
    problem = exc.errors(include_url=False)[0]
    name = ".".join(str(part) for part in problem["loc"]) or "body"
    shown = repr(problem.get("input"))
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    kind = problem["type"]
    if kind == "extra_forbidden":
        return ApiError(
            422, name, f"unknown field {name!r}; the fields are {', '.join(schema.model_fields)}"
        )
    if kind == "missing":
        return ApiError(422, name, f"{name} is required")
    if kind in _EXPECTED:
        return ApiError(422, name, f"{name} must be {_EXPECTED[kind]}, got {shown}")
    return ApiError(422, name, f"{name}: {problem['msg']}, got {shown}")


_FLAG = re.compile(r"--([a-z][a-z-]*)")


def _config_error(exc: UserError, name: str | None = None) -> ApiError:
    """A SampleConfig or check_prime error ("--top-p must be in (0, 1], ...") in the API's words,
    blaming `name` or else the first flag it names."""
    message = str(exc).replace("use --unknown skip", 'send "unknown": "skip"')
    flag = _FLAG.search(message)
    name = name or (flag.group(1).replace("-", "_") if flag else "body")
    return ApiError(422, name, _FLAG.sub(lambda m: m.group(1).replace("-", "_"), message))


async def read_json(request: Request, limits: Limits, schema: type[BaseModel]) -> Any:
    """The request body, size-limited and parsed into `schema`, or an ApiError."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        # also what keeps a web page elsewhere from posting here without a CORS preflight
        raise ApiError(
            415,
            "content-type",
            f"send the body as JSON with the header "
            f"'Content-Type: application/json' (got {kind or 'none'!r})",
        )
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limits.max_body):
        raise ApiError(
            413,
            "body",
            f"the body is {declared} bytes; this service takes at most "
            f"{limits.max_body:,} (--max-body)",
        )
    chunks, size = [], 0
    with anyio.fail_after(limits.request_timeout):
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body:
                raise ApiError(
                    413,
                    "body",
                    f"the body is over {limits.max_body:,} bytes, the "
                    f"most this service takes (--max-body)",
                )
            chunks.append(chunk)
    try:
        value = json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as exc:
        detail = (
            f" ({exc.msg} at line {exc.lineno} column {exc.colno})"
            if isinstance(exc, json.JSONDecodeError)
            else ""
        )
        raise ApiError(400, "body", f"the body is not valid JSON{detail}") from None
    if not isinstance(value, dict):
        raise ApiError(422, "body", f"the body must be a JSON object, got {type(value).__name__}")
    try:
        return schema.model_validate(value)
    except ValidationError as exc:
        raise _validation_error(exc, schema) from None


def sample_config(body: GenerateBody, vocab: Vocab, limits: Limits) -> SampleConfig:
    """The request's SampleConfig, or an ApiError naming the field at fault."""
    if body.length > limits.max_length:
        raise ApiError(
            422,
            "length",
            f"length must be at most {limits.max_length:,} (the service's "
            f"--max-length), got {body.length:,}",
        )
    if len(body.prime) > limits.max_text:
        raise ApiError(
            422,
            "prime",
            f"prime has {len(body.prime):,} characters; this service takes "
            f"at most {limits.max_text:,} (--max-text)",
        )
    if body.num_samples > limits.max_streams:
        raise ApiError(
            422,
            "num_samples",
            f"num_samples must be at most {limits.max_streams} (the "
            f"service's --max-streams), got {body.num_samples}",
        )
    if body.seed is not None and not SEED_RANGE[0] <= body.seed <= SEED_RANGE[1]:
        raise ApiError(422, "seed", f"seed must be between -2**63 and 2**64 - 1, got {body.seed}")
    try:
        config = SampleConfig(
            **{name: getattr(body, name) for name in _option_fields(SampleConfig)}
        )
    except UserError as exc:
        raise _config_error(exc) from None
    try:
        check_prime(vocab, body.prime, body.unknown)
    except UserError as exc:
        raise _config_error(exc, "prime") from None
    return config


def score_summary(analysis: Analysis) -> dict[str, Any]:
    """What /v1/score answers: eval's figures over the scored characters, and each character:
    whether the model knows it, its bits (null where not scored: the first, and any outside the
    vocabulary) and the model's top guesses for it."""
    scored = analysis.scored
    n = int(scored.sum())
    if n == 0:
        raise ApiError(
            422,
            "text",
            "nothing to score: the text needs two characters in the "
            "model's vocabulary (the first is only read)",
        )
    bits = float(analysis.bits[scored].mean())
    right = sum(
        1
        for t in scored.nonzero()[0]
        if analysis.top[t] and analysis.top[t][0][0] == analysis.text[t]
    )
    unknown = [c for c, known in zip(analysis.text, analysis.known) if not known]
    characters = [
        {
            "char": c,
            "known": bool(known),
            "bits": round(b, 4) if math.isfinite(b) else None,
            "top": [[s, round(p, 4)] for s, p in top],
        }
        for c, known, b, top in zip(
            analysis.text, analysis.known, analysis.bits.tolist(), analysis.top
        )
    ]
    return {
        "chars": n,
        "bits_per_char": bits,
        "nats_per_char": bits * LN2,
        "perplexity": 2.0**bits,
        "accuracy": right / n,
        "unknown_chars": len(unknown),
        "unknown_symbols": list(dict.fromkeys(unknown)),
        "characters": characters,
    }
