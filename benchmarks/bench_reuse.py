"""Benchmark: a 1,000,000-row partition run once, then again after 1 % of its rows changed.

Each round does the pipeline's local work with the pipeline's own code: the requests asset's build
(the reuse store's lookup, the lines, their fingerprints, the shards of what must be sent) and the
results asset's join (current fingerprints, the provider's output file joined, held-back rows given
their stored answers, answers checked against the content, the new answers added to the store).
Between the two, the provider's work is simulated outside every timed region: an output file with
one chat completion per request sent, shuffled.

Both rounds run ``--repeat`` times, each on a fresh store; every figure is the best of its runs.
It prints the rows sent and reused in the second round and ``rerun_vs_first``, the second round's
local work as a ratio of the first's (target: at most 0.3; exactly the changed rows sent). The
floor beside it, ``floor_vs_first``, is what the second round cannot avoid: building every line to
know which changed (the build without writing or hashing a file); the naive way, ``naive_rerun``,
sends and joins every row again, as the first round did (ratio 1 by definition).

    python benchmarks/bench_reuse.py --rows 1000000
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_results import make_source  # noqa: E402

from batch_pipelines.profiles import PROFILES  # noqa: E402
from batch_pipelines.providers import ResultFiles  # noqa: E402
from batch_pipelines.requests import HELD_BACK, RequestSpec, SendOnce, build_request_files  # noqa: E402
from batch_pipelines.requests.custom_ids import row_custom_ids  # noqa: E402
from batch_pipelines.requests.row_report import RowReport  # noqa: E402
from batch_pipelines.requests.template_lines import TemplateLines  # noqa: E402
from batch_pipelines.results import (  # noqa: E402
    ReuseStore,
    answer_columns,
    current_fingerprints,
    fresh_answers,
    join_attempt,
    manifest_custom_ids,
)

PROFILE = PROFILES["openai"]
SPEC = RequestSpec(
    model="gpt-4o-mini",
    messages=[{"role": "system", "content": "Classify the review."}, {"role": "user", "content": "Review: {text}"}],
    body={"max_tokens": 16},
    key_column="key",
)


def write_output(path: Path, custom_ids: list[str], seed: int) -> None:
    """What the provider would return for these requests: one chat completion each, shuffled."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(custom_ids))
    prompt = rng.integers(20, 900, len(custom_ids)).tolist()
    completion = rng.integers(2, 16, len(custom_ids)).tolist()
    line = (
        '{{"id":"batch_req_{n:012x}","custom_id":"{cid}","response":{{"status_code":200,"body":{{"id":"chatcmpl-{n:010x}",'
        '"object":"chat.completion","model":"gpt-4o-mini","choices":[{{"index":0,"message":{{"role":"assistant",'
        '"content":"label {label}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{p},"completion_tokens":{c},'
        '"total_tokens":{t}}}}}}},"error":null}}\n'
    )
    with path.open("w", encoding="utf-8") as f:
        f.writelines(
            line.format(n=n, cid=custom_ids[i], label=n % 5, p=prompt[n], c=completion[n], t=prompt[n] + completion[n])
            for n, i in enumerate(order.tolist())
        )


def one_round(source: pd.DataFrame, work: Path, store: ReuseStore, name: str) -> dict[str, float | int]:
    """Build, let the provider answer (untimed), join; the timings and the counts."""
    out_dir = work / "attempt-1"  # one partition's folder, rebuilt in place as the requests asset does
    start = time.perf_counter()
    manifest = build_request_files(source, SPEC, out_dir, profile=PROFILE, send_once=SendOnce(store.known()))
    built = time.perf_counter() - start

    ids_map = manifest.read_ids()
    to_send = ids_map.loc[ids_map["shard"] != HELD_BACK, "custom_id"].tolist()
    output = work / f"{name}.output.jsonl"
    write_output(output, to_send, seed=len(to_send))
    gc.collect()

    start = time.perf_counter()
    ids = manifest_custom_ids(manifest, source.index)
    current = current_fingerprints(source, SPEC, manifest, profile=PROFILE)
    joined = join_attempt(
        source, ids, current, manifest, [ResultFiles(batch_id=f"batch_{name}", output_path=output)],
        by_shard={}, recorded={}, provider=PROFILE.name, known=store.known,
    )  # fmt: skip
    store.record(fresh_answers(joined.frame, answer_columns(joined.frame, source.columns)))
    joined_s = time.perf_counter() - start
    frame = joined.frame
    if (frame["outcome"] != "succeeded").any():
        raise SystemExit(f"{name}: rows without an answer: {frame['outcome'].value_counts().to_dict()}")
    return {"build_s": built, "join_s": joined_s, "sent": manifest.requests, "reused": int(frame["reused"].sum())}


def floor(source: pd.DataFrame, work: Path) -> float:
    """Making every line, without a file, a hash or a lookup: the least a rerun must do to know what changed."""
    start = time.perf_counter()
    keys = source["key"].reset_index(drop=True)
    ids, problems = row_custom_ids(keys, unique=None)
    lines = TemplateLines(source, SPEC, RowReport(keys, problems, "fail"), {}, None)
    step = 20_000
    for begin in range(0, len(source), step):
        lines.chunk(begin, min(begin + step, len(source)), ids)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changed", type=float, default=0.01, help="share of rows changed before the second round")
    parser.add_argument("--repeat", type=int, default=3, help="runs of both rounds; each figure is the best (the machine may be shared)")
    args = parser.parse_args()

    source = make_source(args.rows)
    rng = np.random.default_rng(5)
    changed = np.sort(rng.choice(args.rows, size=int(args.rows * args.changed), replace=False))
    edited = source.copy()
    text = edited["text"].to_numpy(dtype=object)
    text[changed] = [f"{t} (edited)" for t in text[changed]]
    edited["text"] = pd.array(text, dtype="str")

    runs, floors = [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-reuse-") as tmp:
            work = Path(tmp)
            store = ReuseStore(work / "reuse")
            runs.append((one_round(source, work, store, "first"), one_round(edited, work, store, "second")))
            floors.append(floor(edited, work))
    lines_floor = min(floors)
    first = {k: min(r[0][k] for r in runs) for k in runs[0][0]}
    second = {k: min(r[1][k] for r in runs) for k in runs[0][1]}
    first_s = first["build_s"] + first["join_s"]
    second_s = second["build_s"] + second["join_s"]
    print(f"rows={args.rows} changed={len(changed)}")
    for name, r in (("first", first), ("second", second)):
        print(f"{name:>6}: build {r['build_s']:.2f}s join {r['join_s']:.2f}s sent={r['sent']} reused={r['reused']} (best of {args.repeat})")
    print(f" floor: every line made {lines_floor:.2f}s ({lines_floor / first_s:.2f} of the first round)")
    exact = second["sent"] == len(changed)
    print(f"the second round sent {'exactly' if exact else 'NOT exactly'} the {len(changed)} changed rows")
    print(
        f"bench reuse: rows={args.rows} sent={second['sent']} reused={second['reused']} "
        f"rerun_vs_first={second_s / first_s:.3f} floor_vs_first={lines_floor / first_s:.3f} naive_rerun=1.000"
    )


if __name__ == "__main__":
    main()
