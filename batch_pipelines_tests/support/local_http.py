"""What the tests and benchmarks need to talk to servers they start on 127.0.0.1: a free port, and
the GraphQL API of a Dagster webserver."""

from __future__ import annotations

import json
import socket
import urllib.request
from typing import Any

__all__ = ["GraphQLError", "free_port", "graphql"]


class GraphQLError(AssertionError):
    """The webserver answered a GraphQL query with errors."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 nobody listens on (the server started next binds it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def graphql(url: str, query: str, *, timeout: float = 30, **variables: Any) -> dict[str, Any]:
    """The ``data`` of ``query`` posted to the webserver at ``url`` (``http://127.0.0.1:<port>``)."""
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(f"{url}/graphql", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        payload = json.load(response)
    if payload.get("errors"):
        raise GraphQLError(f"GraphQL errors: {payload['errors']}")
    return payload["data"]
