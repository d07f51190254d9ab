"""The local batch service: an OpenAI-style Batch API that runs on this machine.

It is the embedded default provider (the demo needs no API key), the real HTTP server every test
talks to (with fault injection), and a tool for local development (``batch-pipelines serve``).

- :class:`BatchEngine` (``engine.py``): files and batches in a data directory (``store.py``:
  SQLite + files), create-time checks as the posed-as provider profile documents them, answers
  shaped as OpenAI's objects (``openai_objects.py``), errors as :class:`ServiceError`
  (``errors.py``).
- Processing, off the request path: who runs it (``supervision.py``: a thread, or a detached
  process, ``worker.py``, one per data directory by ``worker_lock.py``), the loop
  (``worker_loop.py``), one batch's state machine (``batch_run.py``) with its line-level
  validation (``validation.py``), pace (``pacing.py``) and output lines (``output_lines.py``).
- :func:`create_app` (``app.py``): the engine over HTTP under ``/v1``; the bearer key and HTTP
  faults in front (``guard.py``), streamed uploads (``uploads.py``). :func:`create_realtime_app`:
  a small real-time endpoint.
- :class:`FaultPlan`, :class:`HttpFault` (``faults.py``): deliberate failures, by seed.
- Responders, who answer rows: :class:`Responder` and :class:`DefaultResponder`
  (``responders.py``, with :func:`schema_instance` for structured output),
  :class:`ForwardingResponder` (``forwarding.py``), recorded per batch (``responder_specs.py``).

Nothing here imports the layers above (providers, domain, Dagster).
"""

from batch_pipelines.local_service.app import create_app, create_realtime_app
from batch_pipelines.local_service.engine import BatchEngine
from batch_pipelines.local_service.errors import ServiceError
from batch_pipelines.local_service.faults import FAULTS_METADATA_KEY, FaultPlan, HttpFault
from batch_pipelines.local_service.forwarding import ForwardingResponder
from batch_pipelines.local_service.guard import HttpFaults
from batch_pipelines.local_service.responders import DefaultResponder, Responder
from batch_pipelines.local_service.schema_instance import schema_instance

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
