"""The Dagster tests' fixtures (a temporary instance, the local service over HTTP, the harness), shared here."""

from batch_pipelines_tests.dagster.conftest import harness, instance, service

__all__ = ["harness", "instance", "service"]
