"""Benchmark: the local service's memory under an upload flood of small form fields.

``batch-pipelines serve`` runs as its own process on 127.0.0.1; this process measures its resident
memory when idle (after one ordinary upload), then sends ``POST /v1/files`` chunked (no
Content-Length) with ``--fields`` small form fields (default 200,000 of 4 KB: 800 MB) and no file
part, the attack of issue 16 that once grew the service from 64 MB to 875 MB. The service must
refuse it with a 413 early, before the rest is read, and stay healthy (it lists its files after).

Memory is read from ``/proc/<pid>/status``: ``VmRSS`` (resident now) and ``VmHWM`` (the highest
resident size the process ever had, so no peak between two samples is missed).

    .venv/bin/python benchmarks/bench_service_upload.py [--fields N]

Last line: ``bench service_upload: idle_mb=... peak_mb=... growth_mb=... status=413 sent_mb=... healthy=yes``;
it exits non-zero when growth_mb is 100 or more, the answer is not a 413, or the service is unwell.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx

_MB = 1024 * 1024
_FIELDS_PER_CHUNK = 16
#: Growth of the service's peak over its idle memory that counts as bounded.
MAX_GROWTH_MB = 100


def status_mb(pid: int, field: str) -> float:
    """A ``/proc/<pid>/status`` memory line (``VmRSS``, ``VmHWM``) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def flood(boundary: str, fields: int, value_bytes: int, sent: list[int]) -> Iterator[bytes]:
    """A multipart body of ``fields`` form fields with distinct names and no file part."""
    value = b"v" * value_bytes
    for start in range(0, fields, _FIELDS_PER_CHUNK):
        chunk = b"".join(
            b'--%s\r\nContent-Disposition: form-data; name="field%d"\r\n\r\n%s\r\n' % (boundary.encode(), i, value)
            for i in range(start, min(start + _FIELDS_PER_CHUNK, fields))
        )
        sent[0] += len(chunk)
        yield chunk
    yield b"--%s--\r\n" % boundary.encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fields", type=int, default=200_000)
    parser.add_argument("--value-bytes", type=int, default=4096)
    args = parser.parse_args()

    key = "bench-" + secrets.token_hex(8)  # in the child's environment, never on its command line
    with tempfile.TemporaryDirectory() as tmp:
        child = subprocess.Popen(
            [sys.executable, "-m", "batch_pipelines.cli", "serve", "--port", "0", "--data-dir", str(Path(tmp) / "data")],
            env={**os.environ, "BATCH_PIPELINES_LOCAL_API_KEY": key},
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            first = child.stdout.readline()  # type: ignore[union-attr]
            if "http://" not in first:
                raise SystemExit(f"the service did not start: {first!r}")
            base_url = first.rsplit(" ", 1)[-1].strip()
            client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=600)
            # Idle: started, every route's code loaded by one ordinary upload and one listing.
            client.post("/files", data={"purpose": "batch"}, files={"file": ("warm.jsonl", b'{"a": 1}\n')}).raise_for_status()
            client.get("/files").raise_for_status()
            idle = status_mb(child.pid, "VmRSS")

            boundary = "flood" + secrets.token_hex(4)
            sent = [0]
            headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
            try:
                answer = client.post("/files", headers=headers, content=flood(boundary, args.fields, args.value_bytes, sent))
                status = str(answer.status_code)
            except httpx.HTTPError as exc:  # the service closed the connection after answering
                status = f"closed({type(exc).__name__})"
            peak = status_mb(child.pid, "VmHWM")
            healthy = client.get("/files").status_code == 200
            client.close()
        finally:
            child.terminate()
            child.wait(timeout=30)

    growth = peak - idle
    total_mb = args.fields * (args.value_bytes + 60) / _MB
    print(f"flood: {args.fields} fields of {args.value_bytes} bytes ({total_mb:.0f} MB), {sent[0] / _MB:.1f} MB of it sent")
    print(
        f"bench service_upload: idle_mb={idle:.1f} peak_mb={peak:.1f} growth_mb={growth:.1f} status={status} "
        f"sent_mb={sent[0] / _MB:.1f} healthy={'yes' if healthy else 'no'}"
    )
    if growth >= MAX_GROWTH_MB or status != "413" or not healthy:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
