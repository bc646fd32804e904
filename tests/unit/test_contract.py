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


class Union(BaseModel):
    input: str | list[str] | list[list[int]]


@pytest.mark.parametrize("value", [7, [1.5], ["a", 3]])
def test_a_value_no_union_member_takes_names_the_field_and_what_it_takes(value):
    # pydantic locates each member's refusal under the member's type ("input.str",
    # "input.list[str].0"): the client sent "input", and should read what it may be.
    status, body = run_task(Union, {"input": value}, lambda req: {})
    assert status == 422
    assert body["error"]["field"] == "input"
    assert body["error"]["message"] == "input: expected str, list[str] or list[list[int]]"


def test_a_union_member_inside_a_list_keeps_its_index():
    class Items(BaseModel):
        items: list[int | str]

    status, body = run_task(Items, {"items": [1, None]}, lambda req: {})
    assert status == 422 and body["error"]["field"] == "items.1"
    assert body["error"]["message"] == "items.1: expected int or str"
