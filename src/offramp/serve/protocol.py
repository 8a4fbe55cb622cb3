"""Request parsing and response building for the two wire formats: TEI-style ``/predict`` and KServe v2.

Everything a client sends is checked here, before it reaches the queue, and every problem becomes a
:class:`RequestError` with an HTTP status and a one-line message: 400 for malformed JSON or
parameters, 413 for too many texts or too long a text, 422 for well-formed JSON of the wrong shape.

KServe v2 (Open Inference Protocol): inputs ``text`` (BYTES, shape [N] or [N, 1]) and, for pair tasks,
``text_pair``; request ``parameters`` carry the speed knob (``policy``, ``threshold``, ``params``,
``speedup``); outputs ``label`` (BYTES), ``label_id`` (INT64), ``probabilities`` (FP32 [N, C]),
``exit_layer`` and ``layers_run`` (INT32) — ``prediction`` (FP32) for regression. Inputs may use the
binary tensor data extension (``Inference-Header-Content-Length``; tritonclient's default); outputs are
always JSON, which v2 clients read whatever they asked for.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine import EarlyExitResult
from .config import ServeConfig

#: Request parameters that belong to the protocol or the client library, not to the speed knob.
PROTOCOL_PARAMS = frozenset({"binary_data_output", "headers", "timeout", "priority"})
KNOB_PARAMS = frozenset({"policy", "threshold", "params", "speedup"})


class RequestError(ValueError):
    """Something wrong with a request: ``status`` is the HTTP code to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class ParsedRequest:
    """A request's inputs (strings, or (a, b) pairs), knob parameters, and the v2 outputs asked for."""

    texts: list[Any]
    params: dict[str, Any]
    outputs: list[str] | None = None
    request_id: str | None = None


def load_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise RequestError(400, "request body nests JSON too deeply") from None


def check_limits(texts: list[Any], config: ServeConfig) -> None:
    """413 past ``max_texts`` inputs or ``max_chars`` characters in one text; 422 for no inputs."""
    if not texts:
        raise RequestError(422, "no inputs: expected at least one text")
    if len(texts) > config.max_texts:
        raise RequestError(
            413, f"{len(texts)} inputs in one request; the limit is {config.max_texts} (split the request)"
        )
    for i, row in enumerate(texts):
        parts = (row,) if isinstance(row, str) else row
        longest = max(len(p) for p in parts)
        if longest > config.max_chars:
            raise RequestError(
                413, f"input {i} has {longest} characters; the limit is {config.max_chars} per text"
            )


def knob_params(params: Any, where: str, allow_protocol: bool = False) -> dict[str, Any]:
    """The speed-knob parameters of a request; unknown keys are a 400 (a typo should not pass silently)."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise RequestError(400, f"{where} {params!r}: expected a JSON object")
    allowed = KNOB_PARAMS | (PROTOCOL_PARAMS if allow_protocol else frozenset())
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise RequestError(
            400,
            f"{where}: unknown parameter {unknown[0]!r}; expected some of {', '.join(sorted(KNOB_PARAMS))}",
        )
    return {k: v for k, v in params.items() if k in KNOB_PARAMS}


# ---------------------------------------------------------------------------------------------------------
# /predict (Hugging Face text-embeddings-inference style)
# ---------------------------------------------------------------------------------------------------------
def parse_predict(body: bytes, pair: bool | None, config: ServeConfig) -> ParsedRequest:
    """``{"inputs": "text" | ["a", "b", ...] | [["s1", "s2"], ...], "parameters": {...}}``.

    For a pair model a flat list of two strings is one pair (as in TEI); a batch of pairs is a list of
    two-element lists. For a single-text model a list of strings is a batch.
    """
    data = load_json(body)
    if not isinstance(data, dict) or "inputs" not in data:
        raise RequestError(422, 'expected a JSON object {"inputs": "text" | [...], "parameters": {...}}')
    unknown = sorted(set(data) - {"inputs", "parameters"})
    if unknown:
        raise RequestError(422, f"unknown field {unknown[0]!r}; expected 'inputs' and optional 'parameters'")
    raw = data["inputs"]
    if isinstance(raw, str):
        raw = [raw]
    elif pair and isinstance(raw, list) and len(raw) == 2 and all(isinstance(v, str) for v in raw):
        raw = [raw]
    if not isinstance(raw, list):
        raise RequestError(422, f"inputs of type {type(raw).__name__}: expected a string or a list")
    texts = [_row(item, i, pair) for i, item in enumerate(raw)]
    if len({1 if isinstance(t, str) else 2 for t in texts}) > 1:
        raise RequestError(422, "inputs mix single texts and pairs; expected one kind in a request")
    check_limits(texts, config)
    return ParsedRequest(texts, knob_params(data.get("parameters"), "parameters"))


def _row(item: Any, i: int, pair: bool | None) -> Any:
    if isinstance(item, str):
        if pair:
            raise RequestError(422, f"inputs[{i}] is one text; this pair model expects [text, text_pair]")
        return item
    if isinstance(item, list) and all(isinstance(v, str) for v in item) and len(item) in (1, 2):
        if len(item) == 1:
            if pair:
                raise RequestError(422, f"inputs[{i}] has one text; this pair model expects two")
            return item[0]
        if pair is False:
            raise RequestError(422, f"inputs[{i}] is a pair; this model takes one text per input")
        return (item[0], item[1])
    raise RequestError(422, f"inputs[{i}]: expected a string or a list of two strings")


def predict_response(result: EarlyExitResult) -> list[dict[str, Any]]:
    """Per input: label, label_id, probabilities (by label), exit_layer, layers_run."""
    return result.records()


# ---------------------------------------------------------------------------------------------------------
# KServe v2
# ---------------------------------------------------------------------------------------------------------
def parse_v2_infer(
    body: bytes, header_length: str | None, pair: bool | None, config: ServeConfig
) -> ParsedRequest:
    """A v2 inference request, JSON or JSON + binary tensor data."""
    binary = b""
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise RequestError(
                400, f"Inference-Header-Content-Length {header_length!r}: expected an integer"
            ) from None
        if not 0 < size <= len(body):
            raise RequestError(
                400, f"Inference-Header-Content-Length {size} does not fit a body of {len(body)} bytes"
            )
        body, binary = body[:size], body[size:]
    data = load_json(body)
    if not isinstance(data, dict) or not isinstance(data.get("inputs"), list):
        raise RequestError(
            422, 'expected a JSON object with "inputs": [{"name", "shape", "datatype", "data"}]'
        )
    tensors = _v2_tensors(data["inputs"], binary)
    if "text" not in tensors:
        raise RequestError(
            422, f"no input named 'text' (got {sorted(tensors)}); expected 'text' and for pairs 'text_pair'"
        )
    texts: list[Any] = tensors["text"]
    if "text_pair" in tensors:
        second = tensors["text_pair"]
        if len(second) != len(texts):
            raise RequestError(422, f"'text' has {len(texts)} elements but 'text_pair' {len(second)}")
        texts = list(zip(texts, second, strict=True))
    if pair and "text_pair" not in tensors:
        raise RequestError(422, "this pair model needs the input 'text_pair' as well as 'text'")
    if pair is False and "text_pair" in tensors:
        raise RequestError(422, "this model takes one text per input; drop 'text_pair'")
    check_limits(texts, config)
    outputs = data.get("outputs")
    names = None
    if outputs is not None:
        if not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
        ):
            raise RequestError(422, 'outputs: expected a list of {"name": ...}')
        names = [o["name"] for o in outputs]
    params = knob_params(data.get("parameters"), "parameters", allow_protocol=True)
    request_id = data.get("id") if isinstance(data.get("id"), str) else None
    return ParsedRequest(texts, params, names, request_id)


def _v2_tensors(inputs: list[Any], binary: bytes) -> dict[str, list[str]]:
    """Each input's strings; binary inputs take their slice of ``binary`` in order."""
    tensors: dict[str, list[str]] = {}
    offset = 0
    for i, spec in enumerate(inputs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise RequestError(422, f"inputs[{i}]: expected an object with a 'name'")
        name = spec["name"]
        if name not in ("text", "text_pair"):
            raise RequestError(422, f"unknown input {name!r}; expected 'text' and for pairs 'text_pair'")
        if spec.get("datatype") != "BYTES":
            raise RequestError(422, f"input {name!r} has datatype {spec.get('datatype')!r}; expected 'BYTES'")
        count = _shape_count(spec.get("shape"), name)
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise RequestError(400, f"input {name!r}: binary_data_size {size!r} does not fit the body")
            values = _decode_bytes(binary[offset : offset + size], name)
            offset += size
        else:
            values = _flat_strings(spec.get("data"), name)
        if len(values) != count:
            raise RequestError(422, f"input {name!r}: shape says {count} elements, data has {len(values)}")
        tensors[name] = values
    return tensors


def _shape_count(shape: Any, name: str) -> int:
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise RequestError(422, f"input {name!r}: shape {shape!r}; expected [N] or [N, 1]")
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise RequestError(422, f"input {name!r}: shape {shape}; expected [N] or [N, 1] (one text per row)")
    return shape[0]


def _flat_strings(data: Any, name: str) -> list[str]:
    if not isinstance(data, list):
        raise RequestError(422, f"input {name!r}: 'data' must be a list of strings")
    flat = [v for row in data for v in (row if isinstance(row, list) else [row])]
    if not all(isinstance(v, str) for v in flat):
        raise RequestError(422, f"input {name!r}: 'data' must hold strings")
    return flat


def _decode_bytes(raw: bytes, name: str) -> list[str]:
    """The v2 binary BYTES layout: for each element a 4-byte little-endian length, then the bytes."""
    values, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise RequestError(400, f"input {name!r}: truncated binary BYTES data")
        (length,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + length > len(raw):
            raise RequestError(400, f"input {name!r}: truncated binary BYTES data")
        try:
            values.append(raw[pos : pos + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise RequestError(400, f"input {name!r}: element {len(values)} is not UTF-8 text") from None
        pos += length
    return values


def v2_output_specs(regression: bool, num_labels: int) -> list[dict[str, Any]]:
    """Output metadata: name, datatype, shape (-1 = the batch dimension)."""
    if regression:
        head = [{"name": "prediction", "datatype": "FP32", "shape": [-1]}]
    else:
        head = [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "label_id", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, num_labels]},
        ]
    return head + [
        {"name": "exit_layer", "datatype": "INT32", "shape": [-1]},
        {"name": "layers_run", "datatype": "INT32", "shape": [-1]},
    ]


def v2_outputs(result: EarlyExitResult, wanted: list[str] | None, regression: bool) -> list[dict[str, Any]]:
    """The response's ``outputs`` (only those asked for, when the request named some)."""
    n = len(result)
    values: dict[str, tuple[list[int], Any]] = {}
    if regression:
        values["prediction"] = ([n], np.asarray(result.predictions, dtype=np.float32).tolist())
    else:
        probs = np.asarray(result.probabilities, dtype=np.float32)
        values["label"] = ([n], [str(v) for v in result.labels])
        values["label_id"] = ([n], np.asarray(result.predictions, dtype=np.int64).tolist())
        values["probabilities"] = (list(probs.shape), probs.reshape(-1).tolist())
    values["exit_layer"] = ([n], result.exit_layer.astype(np.int64).tolist())
    values["layers_run"] = ([n], result.layers_run.astype(np.int64).tolist())
    specs = {s["name"]: s["datatype"] for s in v2_output_specs(regression, 0)}
    names = list(values) if wanted is None else check_outputs(wanted, regression)
    return [{"name": k, "datatype": specs[k], "shape": values[k][0], "data": values[k][1]} for k in names]


def check_outputs(wanted: list[str], regression: bool) -> list[str]:
    """422 for an output name this model does not have (checked before the request is queued)."""
    known = [s["name"] for s in v2_output_specs(regression, 0)]
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise RequestError(422, f"unknown output {unknown[0]!r}; this model has {', '.join(known)}")
    return wanted
