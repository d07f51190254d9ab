"""The local batch service: an OpenAI-style Batch API that runs on this machine.

It is the embedded default provider (the demo needs no API key), the real HTTP server every test
talks to (with fault injection), and a tool for local development (``batch-pipelines serve``).

- :class:`BatchEngine` (``engine.py``): files and batches in a data directory (SQLite + files),
  validation as the posed-as provider profile documents it, the lifecycle run by a worker.
- :func:`create_app` (``app.py``): the engine over HTTP under ``/v1``, bearer-key auth, 413s,
  HTTP fault injection. :func:`create_realtime_app`: a small real-time endpoint.
- :class:`FaultPlan`, :class:`HttpFault` (``faults.py``): deliberate failures, by seed.
- :class:`DefaultResponder`, :class:`ForwardingResponder` (``responders.py``): who answers rows.

Nothing here imports the layers above (providers, domain, Dagster).
"""

from batch_pipelines.local_service.app import HttpFaults, create_app, create_realtime_app
from batch_pipelines.local_service.engine import BatchEngine, ServiceError
from batch_pipelines.local_service.faults import FAULTS_METADATA_KEY, FaultPlan, HttpFault
from batch_pipelines.local_service.responders import DefaultResponder, ForwardingResponder, Responder, schema_instance

__all__ = [
    "FAULTS_METADATA_KEY",
    "BatchEngine",
    "DefaultResponder",
    "FaultPlan",
    "ForwardingResponder",
    "HttpFault",
    "HttpFaults",
    "Responder",
    "ServiceError",
    "create_app",
    "create_realtime_app",
    "schema_instance",
]
