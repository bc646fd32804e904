"""The RunPod API calls of a deploy: one read of the account, then template and endpoint saves.

Key rule: each mutation is sent whole, and an ``id`` in its input turns a create into an
update in place (the caller finds the id by name, so a re-deploy never makes a second one);
every call goes through one transport (the runpod SDK's GraphQL client, a fake in tests), and
nothing here decides what to publish.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any


def graphql_literal(value: Any, *, enum: bool = False) -> str:
    """A GraphQL input literal. JSON string escapes are valid GraphQL string escapes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        return value if enum else json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(graphql_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{k}: {graphql_literal(v, enum=k in RunPodAPI.ENUMS)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"no GraphQL literal for {type(value).__name__}")


class RunPodAPI:
    """Every RunPod API call of a deploy, through the runpod SDK's GraphQL client.

    The SDK's ``create_template`` / ``create_endpoint`` cannot update, set an execution
    timeout or pick CPU instances, so the same ``saveTemplate`` / ``saveEndpoint``
    mutations are sent whole: without ``id`` they create, with ``id`` they update.
    """

    STATE_QUERY = (
        "query { myself { podTemplates { id name imageName } "
        "endpoints { id name templateId networkVolumeId } } }"
    )
    ENUMS = frozenset({"flashBootType"})

    def __init__(self, api_key: str, transport: Callable[[str], dict[str, Any]] | None = None):
        self._api_key = api_key
        self._transport = transport or self._sdk

    def _sdk(self, query: str) -> dict[str, Any]:
        import runpod
        from runpod.api import graphql

        runpod.api_key = self._api_key  # the SDK reads its key from the module
        return graphql.run_graphql_query(query)

    def state(self) -> dict[str, list[dict[str, Any]]]:
        mine = self._transport(self.STATE_QUERY)["data"]["myself"]
        return {
            "templates": mine.get("podTemplates") or [],
            "endpoints": mine.get("endpoints") or [],
        }

    def save_template(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        query = (
            f"mutation {{ saveTemplate(input: {graphql_literal(dict(fields))}) "
            "{ id name imageName } }"
        )
        return dict(self._transport(query)["data"]["saveTemplate"])

    def save_endpoint(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        query = (
            f"mutation {{ saveEndpoint(input: {graphql_literal(dict(fields))}) "
            "{ id name templateId workersMin workersMax idleTimeout } }"
        )
        return dict(self._transport(query)["data"]["saveEndpoint"])
