"""A real S3 API server on 127.0.0.1 (moto's), and a bucket of its own per test.

Credentials are dummy values in the environment, where boto and s3fs find them (and the run
workers the tests start inherit them); nothing reaches beyond 127.0.0.1: the endpoint is always
the local server, and the instance metadata service is never asked.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

#: What every run worker of a test needs in its environment to reach the server.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


@dataclass(frozen=True)
class Bucket:
    """A bucket on the local S3 server: its URL (``s3://name/prefix``) and the options to reach it."""

    url: str
    options: dict[str, Any]

    def keys(self) -> list[str]:
        """Every object's key under the URL's prefix."""
        from batch_pipelines.storage import Storage

        return [f.path for f in Storage(self.url, self.options).files()]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The URL of a moto S3 server on 127.0.0.1, for the session."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in S3_ENV.items():
            patch.setenv(name, value)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> Bucket:
    """A new bucket on the local server, as ``s3://<bucket>/storage``."""
    import s3fs

    name = f"test-{uuid.uuid4().hex[:12]}"
    options = {"endpoint_url": s3_endpoint}
    s3fs.S3FileSystem(**options).mkdir(name)
    return Bucket(url=f"s3://{name}/storage", options=options)
