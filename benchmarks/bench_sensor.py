"""One sensor tick over 500 in-flight batches, against polling them one after another.

The local batch service runs in its own process with no batch worker (every batch stays in
flight) and answers each batch retrieve 50 ms late (a service-wide slow-response fault), as a
distant provider would. 100 partitions of 5 batches are recorded in a temporary Dagster instance as
``<name>_batch`` materializations; then one real tick of the pipeline's sensor reads them from the
event log and polls every batch, and the same 500 batches are retrieved in a plain loop with the
same client. Target: tick time at most 1/10 of the loop's.

    .venv/bin/python benchmarks/bench_sensor.py [--batches 500] [--latency 0.05]

Last line: ``bench sensor: batches=500 tick_s=... serial_s=... ratio=...``.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import httpx

from batch_pipelines import BatchProviderResource, RequestSpec, build_batch_pipeline, make_provider
from batch_pipelines.pipeline.ledger import BATCHES_KEY, batches_metadata
from batch_pipelines.submission import SubmittedBatch

_KEY = "sk-bench-sensor"
_PER_PARTITION = 5

# The service: engine without a worker (batches stay "validating"), retrieves answered late.
_SERVER = """
import socket, sys
from pathlib import Path
import uvicorn
from batch_pipelines.local_service import BatchEngine, FaultPlan, HttpFault, create_app

data_dir, latency, key = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
slow = HttpFault(route="/v1/batches/batch_*", method="GET", status=None, times=None, delay=latency)
app = create_app(BatchEngine(data_dir, worker="none"), api_key=key, faults=FaultPlan(http_faults=(slow,)))
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to every batch retrieve")
    parser.add_argument("--concurrency", type=int, default=None, help="max_concurrent_polls (default: the resource's)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-sensor-") as tmp:
        server = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(Path(tmp) / "service"), str(args.latency), _KEY], stdout=subprocess.PIPE, text=True
        )
        try:
            base_url = f"http://127.0.0.1:{server.stdout.readline().strip()}/v1"  # type: ignore[union-attr]
            _wait_until_serving(base_url)
            with dg.DagsterInstance.local_temp(tempdir=tmp) as instance:
                _run(instance, base_url, args.batches, args.concurrency, Path(tmp))
        finally:
            server.terminate()
            server.wait(timeout=30)


def _run(instance: dg.DagsterInstance, base_url: str, count: int, concurrency: int | None, tmp: Path) -> None:
    settings = {"max_concurrent_polls": concurrency} if concurrency else {}
    resource = BatchProviderResource(
        provider="openai", base_url=base_url, api_key=_KEY, storage_dir=str(tmp / "storage"), poll_interval_seconds=0, **settings
    )
    partitions = dg.StaticPartitionsDefinition([f"p{i:04d}" for i in range(-(-count // _PER_PARTITION))])
    spec = RequestSpec(model="gpt-4o-mini", messages=[{"role": "user", "content": "{text}"}])
    pipeline = build_batch_pipeline("bench", source=dg.AssetKey("texts"), spec=spec, partitions_def=partitions)
    texts = dg.AssetSpec("texts", partitions_def=partitions)
    defs = dg.Definitions.merge(pipeline.defs, dg.Definitions(assets=[texts], resources={"batch_provider": resource}))

    ids = _create_batches(base_url, count, tmp)
    print(f"created {len(ids)} in-flight batches on {base_url}")
    for n, partition in enumerate(partitions.get_partition_keys()):
        chunk = ids[n * _PER_PARTITION : (n + 1) * _PER_PARTITION]
        records = [SubmittedBatch(batch_id=b, shard=i, fingerprint=f"fp-{b}", attempt=1) for i, b in enumerate(chunk)]
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key=pipeline.batch_asset.key, partition=partition, metadata={BATCHES_KEY: batches_metadata(records)})
        )

    started = time.perf_counter()
    with dg.build_sensor_context(instance=instance, definitions=defs, resources={"batch_provider": resource}) as context:
        tick = pipeline.sensor.evaluate_tick(context)  # type: ignore[union-attr]
    tick_s = time.perf_counter() - started
    polled = sum(1 for group in json.loads(tick.cursor)["groups"] for b in group["batches"] if b.get("polled_at"))
    if polled != len(ids):
        raise SystemExit(f"the tick polled {polled} of {len(ids)} batches")
    print(f"sensor tick: {tick_s:.2f} s for {polled} batches ({resource.max_concurrent_polls} concurrent polls)")

    with resource.get_provider() as provider:
        started = time.perf_counter()
        for batch_id in ids:
            provider.retrieve_batch(batch_id)
        serial_s = time.perf_counter() - started
    print(f"one after another: {serial_s:.2f} s")
    print(f"bench sensor: batches={len(ids)} tick_s={tick_s:.2f} serial_s={serial_s:.2f} ratio={tick_s / serial_s:.3f}")


def _create_batches(base_url: str, count: int, tmp: Path) -> list[str]:
    """``count`` batches over one small request file (creating is not what is measured)."""
    path = tmp / "requests.jsonl"
    line = {"custom_id": "r0", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", "messages": []}}
    path.write_text(json.dumps(line) + "\n")
    with make_provider("openai", api_key=_KEY, base_url=base_url) as provider:
        uploaded = provider.upload_file(path)
        return [provider.create_batch(uploaded.id, endpoint="/v1/chat/completions").id for _ in range(count)]


def _wait_until_serving(base_url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"{base_url}/batches", headers={"Authorization": f"Bearer {_KEY}"}, timeout=1.0)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


if __name__ == "__main__":
    main()
