"""Shared fixtures: a real local batch service over HTTP on 127.0.0.1.

``local_service(**options)`` starts a :class:`BatchEngine` behind uvicorn on a free port in a
background thread and returns a :class:`LocalService` (``base_url``, ``api_key``, ``engine``,
``data_dir``, ``app``, ``set_faults(plan)``); every service is stopped at teardown.
``wait_for_batch(engine, batch_id, statuses=..., timeout=...)`` polls until a batch reaches one of
``statuses`` (terminal ones by default) and fails the test on the deadline.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from batch_pipelines.local_service import BatchEngine, FaultPlan, create_app

TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass
class LocalService:
    base_url: str
    api_key: str | None
    engine: BatchEngine
    data_dir: Path
    app: Any

    def set_faults(self, plan: FaultPlan) -> None:
        """Swap the service-wide fault plan (HTTP faults now, row faults for new batches)."""
        self.app.state.faults.set(plan)


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 in a daemon thread; ready when constructed."""

    def __init__(self, app: Any, *, timeout: float = 10.0) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the local service did not start")
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


def wait_for_batch(
    engine: BatchEngine, batch_id: str, statuses: Iterable[str] = TERMINAL, *, timeout: float = 30.0
) -> dict[str, Any]:
    """Poll ``engine`` until the batch's status is one of ``statuses``; its JSON then."""
    wanted = set(statuses)
    deadline = time.monotonic() + timeout
    while True:
        batch = engine.get_batch(batch_id)
        if batch["status"] in wanted:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {batch['status']!r} after {timeout}s (wanted {sorted(wanted)})")
        time.sleep(0.02)


@pytest.fixture
def local_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LocalService]]:
    """Factory: ``local_service(profile=, faults=, api_key=, speed=, time_scale=, responder=, worker=, data_dir=)``."""
    started: list[tuple[ServerThread, BatchEngine]] = []

    def start(
        *,
        profile: Any = "openai",
        faults: FaultPlan | None = None,
        api_key: str | None = "sk-test-local",
        speed: str = "instant",
        time_scale: float = 1.0,
        responder: Any = None,
        worker: str = "thread",
        data_dir: Path | None = None,
    ) -> LocalService:
        data_dir = data_dir or tmp_path_factory.mktemp("local_service")
        engine = BatchEngine(
            data_dir, profile=profile, speed=speed, time_scale=time_scale, faults=faults, responder=responder, worker=worker
        )
        app = create_app(engine, api_key=api_key)
        server = ServerThread(app)
        started.append((server, engine))
        return LocalService(f"{server.url}/v1", api_key, engine, engine.data_dir, app)

    yield start
    for server, engine in started:
        server.stop()
        engine.close()
