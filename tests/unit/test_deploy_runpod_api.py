"""deploy/runpod_api.py: the GraphQL RunPod is sent, through the runpod SDK's client."""

from __future__ import annotations

from typing import Any

import pytest

from deploy.runpod_api import RunPodAPI

pytestmark = pytest.mark.unit


# --- the RunPod API client ------------------------------------------------------------------------
def test_runpod_mutations_are_valid_graphql_literals():
    sent: list[str] = []

    def transport(query: str) -> dict[str, Any]:
        sent.append(query)
        return {"data": {"saveEndpoint": {"id": "ep1"}}}

    api = RunPodAPI("rpa_test", transport)
    fields = {
        "id": "ep1",
        "name": 'say "hi"\n',
        "workersMin": 0,
        "flashBootType": "FLASHBOOT",
        "instanceIds": ["cpu3c-2-4"],
        "isServerless": True,
    }
    assert api.save_endpoint(fields) == {"id": "ep1"}
    (query,) = sent
    assert query.startswith("mutation { saveEndpoint(input: {")
    assert 'id: "ep1"' in query and "workersMin: 0" in query
    assert "flashBootType: FLASHBOOT" in query  # an enum, not a string
    assert r'name: "say \"hi\"\n"' in query  # escaped, cannot break out of the string
    assert 'instanceIds: ["cpu3c-2-4"]' in query and "isServerless: true" in query


def test_runpod_api_goes_through_the_sdk_graphql_client(monkeypatch):
    import runpod
    from runpod.api import graphql

    sent: list[str] = []
    monkeypatch.setattr(runpod, "api_key", None)

    def fake_query(query: str, api_key: str | None = None) -> dict[str, Any]:
        sent.append(query)
        assert runpod.api_key == "rpa_test"
        return {
            "data": {"myself": {"podTemplates": [{"id": "t1", "name": "x"}], "endpoints": None}}
        }

    monkeypatch.setattr(graphql, "run_graphql_query", fake_query)
    state = RunPodAPI("rpa_test").state()
    assert state == {"templates": [{"id": "t1", "name": "x"}], "endpoints": []}
    assert sent == [RunPodAPI.STATE_QUERY]
