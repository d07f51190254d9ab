"""Benchmark: join 1,000,000 chat-completion output lines back to a 1,000,000-row source.

Compares, in one run, :func:`batch_pipelines.results.join_results` with

- naive: what the provider guides show: read the text, split it into lines, ``json.loads`` each,
  collect the dicts, pull the wanted fields into a DataFrame, ``merge`` it onto the source (also
  shown, not in the ratio: ``naive_lean``, the same flattening each line as it is parsed);
- floor: ``orjson.loads`` of every line of the same file and nothing else.

The input (a source table and an output file in shuffled order, OpenAI's line shape with usage)
is generated first, outside every timed region. Each measurement runs in a child process of its
own, so one measurement's memory cannot hide in another's: the child builds the source, then times
only the join. Times are wall-clock, best of ``--repeat`` runs (the machine may be shared).

Memory: ``peak_mb`` is the size of the join's inputs (the source and its custom_ids, as
``memory_usage(deep=True)``) plus how far the join raised the process's resident set size: the
kernel's peak (``VmHWM``, restarted through ``/proc/self/clear_refs`` just before the join, after the
allocators handed back what building the inputs left free) minus the resident size at that moment.
``df_mb`` is ``DataFrame.memory_usage(deep=True)`` of the joined frame (source columns included).

    python benchmarks/bench_results.py --rows 1000000
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from batch_pipelines.profiles import CHAT_COMPLETIONS
from batch_pipelines.providers.base import ResultFiles
from batch_pipelines.requests import custom_ids
from batch_pipelines.results import join_results

_WORDS = "the a review product quality service delivery price great poor fine late early broken perfect".split()
_MIB = 1024 * 1024


def make_source(rows: int) -> pd.DataFrame:
    """The source table: a key and an eight-word review text, built in Arrow (no Python string per row)."""
    rng = np.random.default_rng(7)
    words = pa.array(_WORDS, pa.large_string())
    picks = [words.take(pa.array(rng.integers(0, len(_WORDS), rows))) for _ in range(8)]
    texts = pc.binary_join_element_wise(*picks, pa.scalar(" ", pa.large_string()))
    numbers = pc.utf8_lpad(pa.array(np.arange(rows)).cast(pa.large_string()), 7, "0")
    keys = pc.binary_join_element_wise(pa.scalar("row-", pa.large_string()), numbers, pa.scalar("", pa.large_string()))
    return pd.DataFrame({"key": pd.array(keys, dtype="str"), "text": pd.array(texts, dtype="str")})


def write_output(path: Path, rows: int) -> None:
    """An output file as a provider writes it: one chat completion with usage per row, shuffled."""
    rnd = random.Random(11)
    order = list(range(rows))
    rnd.shuffle(order)
    with path.open("wb") as f:
        for n, i in enumerate(order):
            prompt, completion = rnd.randint(20, 900), rnd.randint(2, 300)
            content = " ".join(rnd.choices(_WORDS, k=10))
            line = {
                "id": f"batch_req_{n:012x}",
                "custom_id": f"row-{i:07d}",
                "response": {
                    "status_code": 200,
                    "request_id": f"req_{n:012x}",
                    "body": {
                        "id": f"chatcmpl-{n:010x}",
                        "object": "chat.completion",
                        "created": 1711652795,
                        "model": "gpt-4o-mini-2024-07-18",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                                     "logprobs": None, "finish_reason": "stop"}],  # fmt: skip
                        "usage": {
                            "prompt_tokens": prompt,
                            "completion_tokens": completion,
                            "total_tokens": prompt + completion,
                            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
                        },
                        "system_fingerprint": "fp_0ba0d124f1",
                    },
                },
                "error": None,
            }
            f.write(orjson.dumps(line) + b"\n")


# ---- the three ways, each run in a child process ----------------------------------------------


def run_ours(source: pd.DataFrame, ids: pd.Series, path: Path) -> tuple[pd.DataFrame, float]:
    start = time.perf_counter()
    frame = join_results(source, ids, [ResultFiles(batch_id="batch_bench", output_path=path)], endpoint=CHAT_COMPLETIONS).frame
    return frame, time.perf_counter() - start


def run_naive(source: pd.DataFrame, ids: pd.Series, path: Path) -> tuple[pd.DataFrame, float]:
    """As the guides do: the whole text split into lines, ``json.loads`` each, the dicts collected."""
    start = time.perf_counter()
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").strip().split("\n")]
    frame = source.merge(_flatten(records), left_on="key", right_on="custom_id", how="left")
    return frame, time.perf_counter() - start


def run_naive_lean(source: pd.DataFrame, ids: pd.Series, path: Path) -> tuple[pd.DataFrame, float]:
    """The naive way made frugal: each line flattened as soon as it is parsed, no record kept."""
    start = time.perf_counter()
    with path.open(encoding="utf-8") as f:
        frame = source.merge(_flatten(json.loads(line) for line in f), left_on="key", right_on="custom_id", how="left")
    return frame, time.perf_counter() - start


def _flatten(records: Any) -> pd.DataFrame:
    rows = []
    for record in records:
        body = (record.get("response") or {}).get("body") or {}
        choice = (body.get("choices") or [{}])[0]
        usage = body.get("usage") or {}
        rows.append(
            {
                "custom_id": record["custom_id"],
                "status_code": (record.get("response") or {}).get("status_code"),
                "content": (choice.get("message") or {}).get("content"),
                "finish_reason": choice.get("finish_reason"),
                "prompt_tokens": usage.get("prompt_tokens"),
                "completion_tokens": usage.get("completion_tokens"),
                "total_tokens": usage.get("total_tokens"),
            }
        )
    return pd.DataFrame(rows)


def run_floor(source: pd.DataFrame, ids: pd.Series, path: Path) -> tuple[None, float]:
    loads = orjson.loads
    start = time.perf_counter()
    with path.open("rb") as f:
        for line in f:
            loads(line)
    return None, time.perf_counter() - start


_RUNNERS = {"ours": run_ours, "naive": run_naive, "naive_lean": run_naive_lean, "floor": run_floor}


def _status_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]


def child(way: str, rows: int, data_dir: Path) -> None:
    source = make_source(rows)
    ids = custom_ids(source["key"])  # the request files' custom_ids: an input of the join, as the source is
    # Hand back what building the inputs left free, then restart the kernel's peak count: what
    # follows is the join's own memory on top of its inputs.
    gc.collect()
    pa.default_memory_pool().release_unused()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    frame, seconds = _RUNNERS[way](source, ids, data_dir / "output.jsonl")
    grown = (_status_kib("VmHWM") - before) / 1024
    inputs_mb = (source.memory_usage(deep=True).sum() + ids.memory_usage(deep=True)) / _MIB
    result = {"way": way, "seconds": seconds, "peak_mb": inputs_mb + grown, "join_peak_mb": grown, "inputs_mb": inputs_mb}
    if frame is not None:
        result["df_mb"] = frame.memory_usage(deep=True).sum() / _MIB
        result["rows_out"] = len(frame)
        if way == "ours":
            result["succeeded"] = int((frame["outcome"] == "succeeded").sum())
    print(json.dumps(result))


def measure(way: str, rows: int, data_dir: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", way, "--rows", str(rows), "--dir", str(data_dir)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5, help="runs of ours and of the floor (best time kept); the naive ways run once")
    parser.add_argument("--dir", type=Path, default=None, help="where the input is generated (default: a temporary folder)")
    parser.add_argument("--child", choices=sorted(_RUNNERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rows, args.dir)
        return
    with tempfile.TemporaryDirectory(prefix="bench_results_") as tmp:
        data_dir = args.dir or Path(tmp)
        data_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        write_output(data_dir / "output.jsonl", args.rows)
        size = (data_dir / "output.jsonl").stat().st_size
        print(f"generated {args.rows:,} output lines ({size / _MIB:.0f} MiB) in {time.perf_counter() - start:.1f}s")

        runs: dict[str, list[dict[str, Any]]] = {"floor": [], "ours": []}
        for _ in range(args.repeat):  # interleaved, so a busy moment hurts both alike
            for way in ("floor", "ours"):
                runs[way].append(measure(way, args.rows, data_dir))
                print(f"  {way:10s} {runs[way][-1]['seconds']:7.2f}s  peak {runs[way][-1]['peak_mb']:7.0f} MiB")
        for way in ("naive", "naive_lean"):
            runs[way] = [measure(way, args.rows, data_dir)]
            print(f"  {way:10s} {runs[way][-1]['seconds']:7.2f}s  peak {runs[way][-1]['peak_mb']:7.0f} MiB")

    best = {way: min(r["seconds"] for r in done) for way, done in runs.items()}
    ours = runs["ours"]
    assert all(r["rows_out"] == args.rows and r["succeeded"] == args.rows for r in ours), "every row joined and succeeded"
    peak_mb = max(r["peak_mb"] for r in ours)
    join_peak_mb = max(r["join_peak_mb"] for r in ours)
    df_mb = ours[0]["df_mb"]
    vs_naive, vs_floor = best["naive"] / best["ours"], best["ours"] / best["floor"]
    paired = sorted(o["seconds"] / f["seconds"] for o, f in zip(runs["ours"], runs["floor"]))
    print(
        f"ours {best['ours']:.2f}s, floor {best['floor']:.2f}s (best of {args.repeat}; ours/floor run by run: "
        f"{paired[0]:.2f} .. {paired[-1]:.2f}, median {paired[len(paired) // 2]:.2f}); naive {best['naive']:.2f}s, "
        f"naive_lean {best['naive_lean']:.2f}s (once; ours is {best['naive_lean'] / best['ours']:.1f}x faster than naive_lean)"
    )
    print(
        f"memory: inputs (source and custom_ids) {ours[0]['inputs_mb']:.0f} MiB, the join grew RSS by {join_peak_mb:.0f} MiB at most; "
        f"naive peaked at {runs['naive'][0]['peak_mb']:.0f} MiB, naive_lean at {runs['naive_lean'][0]['peak_mb']:.0f} MiB"
    )
    print(
        f"targets: vs_naive >= 5: {'ok' if vs_naive >= 5 else 'MISSED'}; vs_floor <= 2: {'ok' if vs_floor <= 2 else 'MISSED'}; "
        f"peak <= 2 x df: {'ok' if peak_mb <= 2 * df_mb else 'MISSED'}"
    )
    print(
        f"bench results: rows_per_s={args.rows / best['ours']:.0f} vs_naive={vs_naive:.2f} vs_floor={vs_floor:.2f} "
        f"peak_mb={peak_mb:.0f} df_mb={df_mb:.0f}"
    )


if __name__ == "__main__":
    main()
