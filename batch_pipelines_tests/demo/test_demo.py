"""The demo code location: its shipped data, definitions, Parquet IO manager and `make smoke`."""

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from batch_pipelines.demo.parquet_io import ParquetIOManager
from batch_pipelines.profiles import CUSTOM_ID_PATTERN

DATA_FILE = Path(__file__).resolve().parents[2] / "batch_pipelines" / "demo" / "data" / "texts.csv"
CATEGORIES = {"Literature", "News", "Academic", "Technology", "Lifestyle"}


def _run_python(code: str, env: dict[str, str], tmp_path: Path) -> str:
    """Run ``code`` in a fresh interpreter (the demo reads its environment at import)."""
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_PIPELINES_")}
    full_env.update(DAGSTER_HOME=str(tmp_path), **env)
    done = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_shipped_texts_are_five_days_of_fifty_labelled_rows() -> None:
    texts = pd.read_csv(DATA_FILE, dtype=str)
    assert list(texts.columns) == ["text_id", "day", "label", "text"]
    assert len(texts) == 250
    assert texts["text_id"].is_unique
    assert texts["text_id"].map(lambda i: bool(CUSTOM_ID_PATTERN.match(i))).all()
    assert texts["text"].is_unique and texts["text"].str.len().gt(30).all()
    assert set(texts["label"]) == CATEGORIES
    per_day = texts.groupby(["day", "label"]).size()
    assert (per_day == 10).all(), per_day
    # One partition per shipped day, no more.
    days = dg.DailyPartitionsDefinition(start_date="2026-03-02", end_date="2026-03-07").get_partition_keys()
    assert sorted(texts["day"].unique()) == days


def test_demo_defaults_to_the_local_provider_with_the_sensor_running(tmp_path: Path) -> None:
    out = _run_python(
        "from batch_pipelines.demo.definitions import defs, DAYS, request_spec\n"
        "import dagster as dg\n"
        "r = defs.resources['batch_provider']\n"
        "s = defs.resolve_sensor_def('classify_texts_sensor')\n"
        "print(r.provider, r.local_profile, r.local_speed, request_spec.model, s.default_status.value, s.minimum_interval_seconds)\n"
        "print(sorted(k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()))\n"
        "print(defs.resolve_schedule_def('classify_texts_submit_schedule').cron_schedule)\n",
        {},
        tmp_path,
    )
    first, assets, cron = out.splitlines()
    assert first == "local moonshot realistic kimi-k2.5 RUNNING 5"
    assert assets == str(["classify_texts_batch", "classify_texts_requests", "classify_texts_results", "texts"])
    assert cron == "0 1 * * *"


def test_demo_switches_provider_and_model_from_the_environment(tmp_path: Path) -> None:
    out = _run_python(
        "from batch_pipelines.demo.definitions import defs, request_spec\n"
        "r = defs.resources['batch_provider']\n"
        "print(r.provider, request_spec.model, defs.resolve_sensor_def('classify_texts_sensor').minimum_interval_seconds)\n"
        "print(repr(r))\n",
        {"BATCH_PIPELINES_PROVIDER": "openai", "OPENAI_API_KEY": "sk-secret-never-shown"},
        tmp_path,
    )
    assert out.splitlines()[0] == "openai gpt-4o-mini 60"
    assert "sk-secret-never-shown" not in out


def test_parquet_io_manager_writes_one_file_per_partition(tmp_path: Path) -> None:
    days = dg.StaticPartitionsDefinition(["a", "b"])

    @dg.asset(partitions_def=days, io_manager_key="parquet")
    def numbers(context: dg.AssetExecutionContext) -> pd.DataFrame:
        return pd.DataFrame({"day": [context.partition_key] * 3, "n": [1, 2, 3]})

    @dg.asset(io_manager_key="parquet", ins={"numbers": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())})
    def total(numbers: dict[str, pd.DataFrame]) -> pd.DataFrame:
        return pd.DataFrame({"day": sorted(numbers), "n": [int(numbers[d]["n"].sum()) for d in sorted(numbers)]})

    resources = {"parquet": ParquetIOManager(base_dir=str(tmp_path))}
    for day in ("a", "b"):
        assert dg.materialize([numbers], partition_key=day, resources=resources).success
    assert dg.materialize([numbers, total], selection=[total], resources=resources).success

    assert pd.read_parquet(tmp_path / "numbers" / "b.parquet")["day"].tolist() == ["b"] * 3
    assert pd.read_parquet(tmp_path / "total.parquet").to_dict("list") == {"day": ["a", "b"], "n": [6, 6]}
    assert not list(tmp_path.rglob("*.partial"))


def test_parquet_io_manager_writes_each_partition_of_a_run_over_several(tmp_path: Path) -> None:
    days = dg.StaticPartitionsDefinition(["a", "b", "c"])

    @dg.asset(partitions_def=days, io_manager_key="parquet")
    def numbers(context: dg.AssetExecutionContext) -> dict[str, pd.DataFrame]:
        return {day: pd.DataFrame({"day": [day] * 2}) for day in context.partition_keys}

    resources = {"parquet": ParquetIOManager(base_dir=str(tmp_path))}
    assert dg.materialize([numbers], resources=resources, tags={"dagster/asset_partition_range_start": "a", "dagster/asset_partition_range_end": "b"}).success

    assert sorted(p.name for p in (tmp_path / "numbers").iterdir()) == ["a.parquet", "b.parquet"]
    assert pd.read_parquet(tmp_path / "numbers" / "b.parquet")["day"].tolist() == ["b"] * 2


def test_parquet_io_manager_rejects_what_is_not_a_dataframe(tmp_path: Path) -> None:
    @dg.asset(io_manager_key="parquet")
    def not_a_frame() -> dict[str, int]:
        return {"n": 1}

    with pytest.raises(TypeError, match="asset not_a_frame returned dict"):
        dg.materialize([not_a_frame], resources={"parquet": ParquetIOManager(base_dir=str(tmp_path))})


def test_smoke_runs_the_demo_end_to_end_through_dagster(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_PIPELINES_")}
    done = subprocess.run(
        [sys.executable, "-m", "batch_pipelines.demo.smoke", "--days", "2026-03-02", "--timeout", "120"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.splitlines()[-1]
    assert last == "smoke: 50 rows, succeeded=50: OK", done.stdout
