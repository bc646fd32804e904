"""The request fixtures every runtime answers: the gateway, Modal's ``.local()``, the RunPod
handler. Each runtime's body, after :func:`normalize`, must equal the gateway's.

The store behind every runtime holds a classifier named :data:`MODEL` (the session fixture
``tiny_trained`` in ``tests/conftest.py``). Key rule: a case names only what a user sends
and the status the gateway answers; bodies are compared between runtimes, not spelled out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fnbundle.tasks.predict.serve import PredictTask

MODEL = "tiny"  # store name published by the tiny_trained fixture
MAX_TEXTS = 64  # Settings.max_texts default: one more is "too many"


@dataclass(frozen=True)
class Case:
    name: str
    payload: Any
    status: int  # the gateway's HTTP status for this payload
    error_type: str | None = None  # the error body's "type", None for a 200
    field: str | None = None  # the error body's "field", when it names one


CASES: list[Case] = [
    Case("good", {"model": MODEL, "texts": ["Lovely and well made.", "Broke after a day."]}, 200),
    Case("one_text", {"model": MODEL, "texts": ["Arrived late and the box was crushed."]}, 200),
    Case("texts_empty", {"model": MODEL, "texts": []}, 400, "limit_exceeded", "texts"),
    Case(
        "too_many_texts",
        {"model": MODEL, "texts": ["fine"] * (MAX_TEXTS + 1)},
        400,
        "limit_exceeded",
        "texts",
    ),
    Case("blank_text", {"model": MODEL, "texts": ["ok", "   "]}, 400, "invalid_request", "texts.1"),
    Case("texts_not_list", {"model": MODEL, "texts": "great"}, 422, "validation_error", "texts"),
    Case("text_not_str", {"model": MODEL, "texts": ["ok", 7]}, 422, "validation_error", "texts.1"),
    Case("missing_model", {"texts": ["great"]}, 422, "validation_error", "model"),
    Case(
        "unknown_field",
        {"model": MODEL, "texts": ["ok"], "temperature": 1},
        422,
        "validation_error",
        "temperature",
    ),
    Case(
        "bad_backend",
        {"model": MODEL, "texts": ["ok"], "backend": "gpu"},
        422,
        "validation_error",
        "backend",
    ),
    Case(
        "unknown_model", {"model": "no-such-model", "texts": ["great"]}, 404, "not_found", "model"
    ),
    Case(
        "model_dotdot",
        {"model": "../etc/passwd", "texts": ["great"]},
        400,
        "invalid_request",
        "model",
    ),
]

# A version id is "<name>-<YYYYmmdd>-<HHMMSS>-<6 hex>"; only the name is stable.
_VERSION_SUFFIX = re.compile(r"-\d{8}-\d{6}-[0-9a-f]{6}$")
SCORE_DIGITS = 4  # one batch vs. another pads differently: compare to 4 decimals


def normalize(body: Any) -> Any:
    """``body`` without what differs between runs: version ids become names, scores rounded."""
    if isinstance(body, dict):
        out = {}
        for key, value in body.items():
            if key == "model" and isinstance(value, str):
                value = _VERSION_SUFFIX.sub("", value)
            out[key] = normalize(value)
        return out
    if isinstance(body, list):
        return [normalize(v) for v in body]
    if isinstance(body, float):
        return round(body, SCORE_DIGITS)
    return body


def check_body(case: Case, body: dict[str, Any]) -> None:
    """Assert what any runtime's body for ``case`` must say, whatever the gateway says."""
    if case.status == 200:
        assert "error" not in body, body
        assert _VERSION_SUFFIX.sub("", body["model"]) == case.payload["model"], body
        assert len(body["predictions"]) == len(case.payload["texts"]), body
        for prediction in body["predictions"]:
            assert prediction["label"] in prediction["scores"], body
            assert abs(sum(prediction["scores"].values()) - 1) < 1e-3, body
        return
    assert set(body) == {"error"}, body
    assert body["error"]["type"] == case.error_type, body
    assert body["error"].get("field") == case.field, body
    assert body["error"]["message"] and "Traceback" not in body["error"]["message"], body


# --- embed: POST /v1/embeddings, errors in OpenAI's shape ---------------------------------
EMBED_MODEL = "tiny-embed"  # store name of tests.unit.tiny_onnx.publish_tiny_embedder
EMBED_MAX_TOKENS = 16  # that artifact's max_tokens: one token more is "too many"

EMBED_CASES: list[Case] = [
    Case("good", {"model": EMBED_MODEL, "input": ["good great", "bad awful"]}, 200),
    Case("one_string", {"model": EMBED_MODEL, "input": "great"}, 200),
    Case("tokens", {"model": EMBED_MODEL, "input": [[1, 2, 3]]}, 200),
    Case("base64", {"model": EMBED_MODEL, "input": ["good"], "encoding_format": "base64"}, 200),
    Case("input_empty", {"model": EMBED_MODEL, "input": []}, 400, "limit_exceeded", "input"),
    Case("missing_input", {"model": EMBED_MODEL}, 422, "validation_error", "input"),
    Case("unknown_model", {"model": "no-such-model", "input": "x"}, 404, "not_found", "model"),
    Case("model_dotdot", {"model": "../etc", "input": "x"}, 400, "invalid_request", "model"),
]


def check_embed_body(case: Case, body: dict[str, Any]) -> None:
    """What any runtime's ``/v1/embeddings`` body for ``case`` must say (OpenAI's shape)."""
    if case.status == 200:
        assert "error" not in body, body
        inputs = case.payload["input"]
        count = 1 if isinstance(inputs, str) else len(inputs)
        assert [row["index"] for row in body["data"]] == list(range(count)), body
        assert body["usage"]["prompt_tokens"] > 0, body
        return
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["code"] == case.error_type, body
    assert body["error"]["param"] == case.field, body
    assert "Traceback" not in body["error"]["message"], body


PREDICT_MODEL = "churn"  # a logistic regression on data/churn.csv (tests/contract/test_predict.py)
PREDICT_ROW = PredictTask.example["rows"][0]  # a churn customer, as the task documents

PREDICT_CASES: list[Case] = [
    Case(
        "good", {"model": PREDICT_MODEL, "rows": [PREDICT_ROW, PREDICT_ROW | {"plan": "free"}]}, 200
    ),
    Case(
        "columns",
        {"model": PREDICT_MODEL, "columns": {k: [v] for k, v in PREDICT_ROW.items()}},
        200,
    ),
    Case(
        "unseen_category", {"model": PREDICT_MODEL, "rows": [PREDICT_ROW | {"plan": "gold"}]}, 200
    ),
    Case("rows_empty", {"model": PREDICT_MODEL, "rows": []}, 400, "limit_exceeded", "rows"),
    Case(
        "bad_number",
        {"model": PREDICT_MODEL, "rows": [PREDICT_ROW | {"seats": "many"}]},
        422,
        "validation_error",
        "rows.0.seats",
    ),
    Case(
        "missing_column",
        {"model": PREDICT_MODEL, "rows": [{k: v for k, v in PREDICT_ROW.items() if k != "plan"}]},
        422,
        "validation_error",
        "rows.0.plan",
    ),
    Case(
        "unknown_column",
        {"model": PREDICT_MODEL, "rows": [PREDICT_ROW | {"colour": "red"}]},
        422,
        "validation_error",
        "rows.0.colour",
    ),
    Case("no_rows", {"model": PREDICT_MODEL}, 422, "validation_error", None),
    Case(
        "unknown_model",
        {"model": "no-such-model", "rows": [PREDICT_ROW]},
        404,
        "not_found",
        "model",
    ),
]

GENERATE_MODEL = "tiny-llm"  # the tiny Llama imported as a base (tests/contract/test_generate_*)
_SAY = [{"role": "user", "content": "The film was long but the acting was superb."}]
GENERATE_CASES: list[Case] = [
    Case(
        "good", {"model": GENERATE_MODEL, "messages": _SAY, "max_tokens": 8, "temperature": 0}, 200
    ),
    Case("missing_messages", {"model": GENERATE_MODEL}, 422, "validation_error", "messages"),
    Case(
        "max_tokens_negative",
        {"model": GENERATE_MODEL, "messages": _SAY, "max_tokens": -1},
        422,
        "validation_error",
        "max_tokens",
    ),
    Case(
        "max_tokens_beyond_context",
        {"model": GENERATE_MODEL, "messages": _SAY, "max_tokens": 100_000},
        400,
        "limit_exceeded",
        "max_tokens",
    ),
    Case("unknown_model", {"model": "no-such-model", "messages": _SAY}, 404, "not_found", "model"),
]

CASES_BY_TASK: dict[str, list[Case]] = {
    "classify": CASES,
    "embed": EMBED_CASES,
    "predict": PREDICT_CASES,
    "generate": GENERATE_CASES,
}
