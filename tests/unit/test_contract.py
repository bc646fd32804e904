import pytest
from fnbundle.contract import run_task
from fnbundle.errors import NotFound
from pydantic import BaseModel

pytestmark = pytest.mark.unit


class Req(BaseModel):
    texts: list[str]


class Resp(BaseModel):
    n: int


def count(req: Req) -> Resp:
    if req.texts == ["missing"]:
        raise NotFound("Model 'x' not found in the store.", field="model")
    if req.texts == ["bug"]:
        raise KeyError("internal detail")
    return Resp(n=len(req.texts))


@pytest.mark.parametrize(
    ("payload", "status", "type_", "field"),
    [
        ({"texts": ["a", "b"]}, 200, None, None),
        ({"texts": [1]}, 422, "validation_error", "texts.0"),
        ({}, 422, "validation_error", "texts"),
        ("{not json", 400, "invalid_json", None),
        ([1, 2], 422, "validation_error", None),
        ({"texts": ["missing"]}, 404, "not_found", "model"),
        ({"texts": ["x" * 200]}, 413, "payload_too_large", None),
    ],
)
def test_payloads_map_to_one_error_vocabulary(payload, status, type_, field):
    got_status, body = run_task(Req, payload, count, max_bytes=100)
    assert got_status == status
    if status == 200:
        assert body == {"n": 2}
    else:
        assert body["error"]["type"] == type_
        assert body["error"].get("field") == field
        assert body["error"]["message"]


def test_bugs_become_a_500_without_details():
    status, body = run_task(Req, {"texts": ["bug"]}, count)
    assert status == 500
    assert body == {
        "error": {
            "type": "internal_error",
            "message": "Internal error; the server log has the details.",
        }
    }
