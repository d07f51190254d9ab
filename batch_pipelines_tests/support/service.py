"""The local batch service over real HTTP on 127.0.0.1, for tests.

:func:`start_service` starts a :class:`BatchEngine` behind uvicorn on a free port in a background
thread; the ``local_service`` fixture (conftest) hands it out and stops every service at teardown.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import uvicorn

from batch_pipelines.local_service import BatchEngine, FaultPlan, ServiceError, create_app
from batch_pipelines.requests.fingerprints import line_fingerprints
from batch_pipelines_tests.support.waiting import wait_until

__all__ = ["LocalService", "ServerThread", "sent_fingerprints", "sent_per_custom_id", "service_batches", "start_service"]


@dataclass
class LocalService:
    base_url: str
    api_key: str | None
    engine: BatchEngine
    data_dir: Path
    app: Any
    server: ServerThread

    def set_faults(self, plan: FaultPlan) -> None:
        """Swap the service-wide fault plan (HTTP faults now, row faults for new batches)."""
        self.app.state.faults.set(plan)

    def stop(self) -> None:
        self.server.stop()
        self.engine.close()


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 in a daemon thread; ready when constructed."""

    def __init__(self, app: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self._thread.start()

        def up() -> bool:
            if not self._thread.is_alive():
                raise RuntimeError("the local service did not start")
            return self._server.started

        wait_until(up, interval=0.01)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


def start_service(
    data_dir: Path,
    *,
    profile: Any = "openai",
    faults: FaultPlan | None = None,
    api_key: str | None = "sk-test-local",
    speed: str = "instant",
    time_scale: float = 1.0,
    responder: Any = None,
    worker: str = "thread",
) -> LocalService:
    engine = BatchEngine(data_dir, profile=profile, speed=speed, time_scale=time_scale, faults=faults, responder=responder, worker=worker)
    app = create_app(engine, api_key=api_key)
    server = ServerThread(app)
    return LocalService(f"{server.url}/v1", api_key, engine, engine.data_dir, app, server)


def service_batches(service: LocalService) -> list[dict[str, Any]]:
    """Every batch the service holds, newest first."""
    batches: list[dict[str, Any]] = []
    after = None
    while True:
        page = service.engine.list_batches(after=after, limit=100)
        batches += page["data"]
        if not page["has_more"]:
            return batches
        after = page["last_id"]


def sent_per_custom_id(service: LocalService) -> Counter[str]:
    """How many times each custom_id was sent, over every request file the service received."""
    sent: Counter[str] = Counter()
    for file in service.engine.list_files(purpose="batch")["data"]:
        with service.engine.file_content_path(file["id"]).open("rb") as fh:
            sent.update(orjson.loads(line)["custom_id"] for line in fh)
    return sent


def sent_fingerprints(service: LocalService) -> dict[tuple[str, str], str]:
    """(batch id, custom_id) -> the fingerprint of the request that batch was sent for that row."""
    sent: dict[tuple[str, str], str] = {}
    for batch in service_batches(service):
        try:
            path = service.engine.file_content_path(batch["input_file_id"])
        except ServiceError:  # deleted since (a file quota guard, a fault): nothing to compare
            continue
        lines = path.read_bytes().splitlines(keepends=True)
        ids = [orjson.loads(line)["custom_id"] for line in lines]
        ends = np.cumsum([len(line) for line in lines])
        prints = line_fingerprints(memoryview(b"".join(lines)), ends, pa.array(ids)).to_pylist()
        sent.update(((batch["id"], cid), fp) for cid, fp in zip(ids, prints))
    return sent
