"""Benchmark: request files for N rows (default 1,000,000) against the naive way and the floor.

Data: three text columns (title, body, lang) with some quotes, newlines and non-ASCII text, and a
chat template with a system and a user message. Profile: OpenAI's limits (50,000 requests per
file), so 1M rows give 20 shards.

Three ways write the same requests:
- ours:  ``build_request_files`` (validation, custom_ids, sharding, sha256, id map, manifest).
- naive: what the provider guides show: a Python loop over the rows building each request dict,
  ``json.dumps`` per request, one ``write`` per line.
- floor: orjson-serializing the same request dicts, already built outside the timed region, into
  the same shard files (one shard's dicts at a time, so memory stays comparable). Its files must be
  byte-identical to ours: the benchmark checks that, so the comparison is like for like.

Peak memory: RSS sampled every millisecond by a thread during our run, minus the RSS just before
it, taken once the DataFrame is built and freed memory has been handed back to the OS (so the
baseline is the DataFrame, not the garbage of generating it). RSS rather than tracemalloc because
Arrow allocates its buffers outside Python's allocator, where tracemalloc does not look, and
because tracing every allocation would slow the timed code; RSS also counts what the allocators
keep cached, so it errs on the high side. The last line is the summary:
``bench requests: rows_per_s=... vs_naive=... vs_floor=... peak_mb=...``
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from batch_pipelines.profiles import get_profile
from batch_pipelines.requests import RequestManifest, RequestSpec, build_request_files

SYSTEM = "You are a careful classifier. Answer with one label: news, review, question, other."
USER = "Language: {lang}\nTitle: {title}\n\nText:\n{body}"
_WORDS = (
    "the quick brown fox jumps over lazy dog data pipeline batch request über naïve café 東京 "
    'model token label review news question answer "quoted" it\'s back\\slash tab\tend'
).split(" ")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def make_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    """Random text built with Arrow (a Python loop would dominate the benchmark's own runtime)."""
    rng = np.random.default_rng(seed)
    vocabulary = pa.array(_WORDS + ["line\nbreak"], pa.large_string())

    def text(words: int) -> pd.Series:
        picks = [vocabulary.take(pa.array(rng.integers(0, len(vocabulary), rows))) for _ in range(words)]
        return pd.Series(pc.binary_join_element_wise(*picks, pa.scalar(" ", pa.large_string())), dtype="str")

    langs = pa.array(["en", "de", "fr", "ja"]).take(pa.array(rng.integers(0, 4, rows)))
    return pd.DataFrame({"title": text(8), "body": text(40), "lang": pd.Series(langs, dtype="str")})


def _settle() -> None:
    """Hand freed memory back to the OS so the RSS baseline holds only live data (the DataFrame)."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the baseline is a little less clean, nothing else changes
        pass


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class _PeakRss:
    """Highest RSS seen while the block runs, sampled by a thread."""

    def __enter__(self) -> _PeakRss:
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _request(custom_id: str, title: str, body: str, lang: str, model: str) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": USER.format(title=title, body=body, lang=lang)},
            ],
            "max_tokens": 20,
        },
    }


def run_naive(df: pd.DataFrame, out: Path, model: str, per_file: int) -> float:
    """The provider guide's way: loop, build the dict, json.dumps, write a line."""
    start = time.perf_counter()
    f = None
    for i, (title, body, lang) in enumerate(zip(df["title"], df["body"], df["lang"])):
        if i % per_file == 0:
            if f:
                f.close()
            f = open(out / f"naive-{i // per_file:05d}.jsonl", "w", encoding="utf-8")
        f.write(json.dumps(_request(str(i), title, body, lang, model), ensure_ascii=False) + "\n")
    if f:
        f.close()
    return time.perf_counter() - start


def run_floor(df: pd.DataFrame, manifest: RequestManifest, out: Path, model: str) -> float:
    """orjson over prebuilt dicts into the same shards; checks the bytes equal ours."""
    ids = manifest.read_ids()
    columns = [df["title"].tolist(), df["body"].tolist(), df["lang"].tolist()]
    timed = 0.0
    for index, shard in enumerate(manifest.shards):
        part = ids[ids["shard"] == index]
        dicts = [
            _request(cid, columns[0][r], columns[1][r], columns[2][r], model)
            for cid, r in zip(part["custom_id"].tolist(), part["row"].tolist())
        ]
        path = out / f"floor-{index:05d}.jsonl"
        start = time.perf_counter()
        dumps = orjson.dumps
        with open(path, "wb") as f:
            f.write(b"".join([dumps(d) + b"\n" for d in dicts]))
        timed += time.perf_counter() - start
        del dicts
        if hashlib.sha256(path.read_bytes()).hexdigest() != shard.sha256:
            raise SystemExit(f"floor shard {index} differs from ours: the comparison would not be fair")
    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the written files (printed path)")
    args = parser.parse_args()

    profile = get_profile("openai")
    model = "gpt-4o-mini"
    t = time.perf_counter()
    df = make_frame(args.rows)
    print(f"data: {args.rows:,} rows, {df.memory_usage(deep=True).sum() / 1e6:.0f} MB in {time.perf_counter() - t:.1f}s")
    spec = RequestSpec(
        model=model,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}],
        body={"max_tokens": 20},
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench_requests_"))
    try:
        _settle()
        with _PeakRss() as rss:
            start = time.perf_counter()
            manifest = build_request_files(df, spec, tmp / "ours", profile=profile)
            ours = time.perf_counter() - start
        peak_mb = (rss.peak - rss.base) / 1e6
        total = sum(s.bytes for s in manifest.shards)
        largest = max(s.bytes for s in manifest.shards)
        print(
            f"ours:  {ours:.2f}s  {len(manifest.shards)} shards, {total / 1e6:.0f} MB, "
            f"largest shard {largest / 1e6:.1f} MB, peak RSS above the DataFrame {peak_mb:.0f} MB"
        )
        (tmp / "floor").mkdir()
        floor = run_floor(df, manifest, tmp / "floor", model)
        print(f"floor: {floor:.2f}s  (orjson over prebuilt dicts; files byte-identical to ours)")
        shutil.rmtree(tmp / "floor")
        (tmp / "naive").mkdir()
        naive = run_naive(df, tmp / "naive", model, profile.max_requests_per_file or args.rows)
        print(f"naive: {naive:.2f}s  (loop + json.dumps per request)")
    finally:
        if args.keep:
            print(f"files kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"bench requests: rows_per_s={args.rows / ours:,.0f} vs_naive={naive / ours:.1f} "
        f"vs_floor={ours / floor:.2f} peak_mb={peak_mb:.0f}"
    )


if __name__ == "__main__":
    main()
