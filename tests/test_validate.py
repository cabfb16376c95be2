"""Tests for the validation stage on small hand-built tables.

Great Expectations makes each run cost about a second (and its import several), so the clean and
the dirty data sets are each validated once in module-scoped fixtures and inspected by several
tests. Table-level failures are raised before GX is touched, so those tests are cheap.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from pipelines.validate import (
    DataValidationError,
    ValidationResult,
    print_summary,
    validate_dataset,
)
from recsys.core.schema import EVENT_TYPES, TABLES, table_path

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
N_ITEMS, N_USERS, N_EVENTS = 20, 10, 60


def make_items(n: int = N_ITEMS) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": [f"i{k:02d}" for k in range(n)],
            "title": [f"Item {k}" for k in range(n)],
            "category": ["tops" if k % 2 else "bottoms" for k in range(n)],
            "price": [10.0 + k for k in range(n)],
            "in_stock": [True] * n,
            "launch_date": pd.date_range("2024-01-01", periods=n, freq="D", tz="UTC"),
            "supplier": ["acme"] * n,  # not in the canonical schema: must pass through
        }
    )


def make_users(n: int = N_USERS) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [f"u{k}" for k in range(n)],
            "age": pd.array([20 + k for k in range(n - 1)] + [None], dtype="Int64"),
            "gender": ["f" if k % 2 else "m" for k in range(n)],
            "signup_date": pd.date_range("2023-01-01", periods=n, freq="D", tz="UTC"),
        }
    )


def make_interactions(n: int = N_EVENTS) -> pd.DataFrame:
    # Naive nanosecond timestamps, as pandas writes them by default: validation must read them
    # as UTC and store microseconds.
    stamps = [NOW.replace(tzinfo=None) - timedelta(hours=k + 1) for k in range(n)]
    return pd.DataFrame(
        {
            "user_id": [f"u{k % N_USERS}" for k in range(n)],
            "item_id": [f"i{k % N_ITEMS:02d}" for k in range(n)],
            "timestamp": pd.to_datetime(stamps),
            "event_type": [EVENT_TYPES[k % len(EVENT_TYPES)] for k in range(n)],
            "value": [1.0] * n,
            "price": [10.0 + k % N_ITEMS for k in range(n)],
            "session_id": [f"s{k // 5}" for k in range(n)],
        }
    )


def write_raw(raw: Path, *tables: pd.DataFrame | None) -> Path:
    """Write interactions, items and users (a None table is left out)."""
    raw.mkdir(parents=True, exist_ok=True)
    for name, frame in zip(("interactions", "items", "users"), tables, strict=True):
        if frame is not None:
            frame.to_parquet(table_path(raw, name), index=False)
    return raw


def run(root: Path, **kwargs: object) -> ValidationResult:
    """Validate ``root/raw`` into ``root``'s validated, quarantine and reports folders."""
    folders = (root / "raw", root / "validated", root / "quarantine", root / "reports")
    return validate_dataset(*folders, now=NOW, **kwargs)  # type: ignore[arg-type]


def dirty_data() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Clean tables plus one planted defect per rule, each with a known reason."""
    bad_items = pd.DataFrame(
        {
            "item_id": ["i00", "i_neg", None],
            "title": ["Duplicate of i00", "Negative", "No key"],
            "price": [99.0, -5.0, 1.0],
        }
    )
    items = pd.concat([make_items(), bad_items], ignore_index=True)
    bad_users = pd.DataFrame(
        {"user_id": ["u_child", "u_old", "u0"], "age": pd.array([7, 150, 30], dtype="Int64")}
    )
    users = pd.concat([make_users(), bad_users], ignore_index=True)

    inter = make_interactions()
    base = inter.iloc[[1]].reset_index(drop=True)
    planted = [
        base.assign(price=-3.0),  # negative_price
        base.assign(item_id="nope"),  # unknown_item_id
        base.assign(item_id="i_neg"),  # unknown_item_id: the item itself was quarantined
        base.assign(timestamp=pd.Timestamp(NOW.replace(tzinfo=None) + timedelta(days=2))),
        base.assign(event_type="click"),  # invalid_event_type
        base.assign(user_id="ghost"),  # unknown_user_id
        base.assign(user_id=None),  # null_user_id
        inter.iloc[[0]],  # duplicate_event of row 0
    ]
    inter = pd.concat([inter, *planted], ignore_index=True)
    return inter, items, users


EXPECTED_REASONS = {
    "interactions": {
        "negative_price": 1,
        "unknown_item_id": 2,
        "future_timestamp": 1,
        "invalid_event_type": 1,
        "unknown_user_id": 1,
        "null_user_id": 1,
        "duplicate_event": 1,
    },
    "items": {"duplicate_item_id": 1, "negative_price": 1, "null_item_id": 1},
    "users": {"age_out_of_range": 2, "duplicate_user_id": 1},
}


CleanRuns = tuple[Path, ValidationResult, ValidationResult]
DirtyRun = tuple[Path, ValidationResult]


@pytest.fixture(scope="module")
def clean_runs(tmp_path_factory: pytest.TempPathFactory) -> CleanRuns:
    """The clean data set validated twice into the same folders (idempotence)."""
    root = tmp_path_factory.mktemp("clean")
    write_raw(root / "raw", make_interactions(), make_items(), make_users())
    return root, run(root), run(root)


@pytest.fixture(scope="module")
def dirty_run(tmp_path_factory: pytest.TempPathFactory) -> DirtyRun:
    root = tmp_path_factory.mktemp("dirty")
    write_raw(root / "raw", *dirty_data())
    return root, run(root, max_bad_fraction=0.5)


def test_clean_dataset_passes(clean_runs: CleanRuns) -> None:
    root, result, _ = clean_runs
    sizes = {"interactions": N_EVENTS, "items": N_ITEMS, "users": N_USERS}
    assert set(result.tables) == set(sizes)
    for name, t in result.tables.items():
        n = sizes[name]
        assert (t.rows_in, t.rows_valid, t.rows_quarantined, t.reasons) == (n, n, 0, {})
        assert t.expectations_failed == 0 and t.expectations_passed > 0
    assert result.report_path == root / "reports" / "data_docs" / "index.html"
    assert result.report_path.is_file()
    assert "recsys_interactions" in result.report_path.read_text()


def test_validated_tables_follow_canonical_schema(clean_runs: CleanRuns) -> None:
    root = clean_runs[0]
    for name, canonical in TABLES.items():
        schema = pq.read_schema(table_path(root / "validated", name))
        assert schema.names[: len(canonical)] == canonical.names
        for target in canonical:
            assert schema.field(target.name).type == target.type, (name, target.name)
            assert schema.field(target.name).nullable == target.nullable, (name, target.name)
    items = pq.read_table(table_path(root / "validated", "items"))
    assert items.column("supplier").to_pylist() == ["acme"] * N_ITEMS  # extra column kept
    interactions = pq.read_table(table_path(root / "validated", "interactions"))
    assert interactions.column("timestamp")[0].as_py() == NOW - timedelta(hours=1)


def test_clean_run_writes_empty_quarantine_files(clean_runs: CleanRuns) -> None:
    root, result, _ = clean_runs
    for name in TABLES:
        table = pq.read_table(table_path(result.quarantine_dir, name))
        assert table.num_rows == 0
        assert table.column_names[-1] == "reason"
        assert set(TABLES[name].names) <= set(table.column_names)
    assert result.quarantine_dir == root / "quarantine"


def test_second_run_in_same_reports_dir(clean_runs: CleanRuns) -> None:
    _, first, second = clean_runs
    assert second.tables == first.tables
    assert second.report_path == first.report_path  # test_clean_dataset_passes: it is a file


def test_dirty_rows_are_quarantined_with_reasons(dirty_run: DirtyRun) -> None:
    _, result = dirty_run
    for name, expected in EXPECTED_REASONS.items():
        table = result.tables[name]
        assert table.reasons == expected, name
        assert table.rows_quarantined == sum(expected.values())
        assert table.rows_in == table.rows_valid + table.rows_quarantined
        assert table.expectations_failed > 0, name
    assert result.tables["interactions"].rows_in == N_EVENTS + 8
    assert result.tables["users"].rows_valid == N_USERS  # u0 kept once, null age allowed


def test_quarantine_files_hold_the_bad_rows(dirty_run: DirtyRun) -> None:
    root, result = dirty_run
    bad = {n: pd.read_parquet(table_path(result.quarantine_dir, n)) for n in EXPECTED_REASONS}
    good = {n: pd.read_parquet(table_path(root / "validated", n)) for n in EXPECTED_REASONS}
    for name, expected in EXPECTED_REASONS.items():
        assert bad[name]["reason"].value_counts().to_dict() == expected
        assert len(good[name]) + len(bad[name]) == result.tables[name].rows_in

    dup = bad["items"].loc[bad["items"]["reason"] == "duplicate_item_id"]
    assert dup["title"].tolist() == ["Duplicate of i00"]  # the first copy is the one kept
    items = good["items"]
    assert items.loc[items["item_id"] == "i00", "title"].tolist() == ["Item 0"]

    inter_q = bad["interactions"]
    by_reason = inter_q.groupby("reason")
    assert sorted(by_reason.get_group("unknown_item_id")["item_id"]) == ["i_neg", "nope"]
    assert by_reason.get_group("future_timestamp")["timestamp"].iloc[0] > pd.Timestamp(NOW)
    assert by_reason.get_group("invalid_event_type")["event_type"].tolist() == ["click"]
    assert inter_q["session_id"].notna().all()  # original columns travel with the reason

    ages = bad["users"].loc[bad["users"]["reason"] == "age_out_of_range", "age"]
    assert sorted(ages.tolist()) == [7, 150]


def _stored_results(reports: Path) -> dict[str, dict]:
    """The validation results GX stored under ``reports``, by suite name (the last run's)."""
    out: dict[str, dict] = {}
    for path in sorted((reports / "gx").rglob("*.json"), key=lambda p: p.stat().st_mtime):
        body = json.loads(path.read_text())
        if "suite_name" in body and "results" in body:
            out[body["suite_name"]] = body
    return out


def test_parts_give_the_same_result_as_one_batch(dirty_run: DirtyRun, tmp_path: Path) -> None:
    """Large tables go through GX in parts (split by key hash, merged into one result): on the
    dirty data in parts of 16 rows every count, outcome and output equals the one-batch run's."""
    root, whole = dirty_run
    write_raw(tmp_path / "raw", *dirty_data())
    parts = run(tmp_path, max_bad_fraction=0.5, gx_chunk_rows=16)
    assert parts.tables == whole.tables
    for folder in ("validated", "quarantine"):
        for name in EXPECTED_REASONS:
            got = pd.read_parquet(table_path(tmp_path / folder, name))
            pd.testing.assert_frame_equal(got, pd.read_parquet(table_path(root / folder, name)))

    stored, whole_stored = _stored_results(tmp_path / "reports"), _stored_results(root / "reports")
    for suite, merged in stored.items():
        one = whole_stored[suite]
        assert merged["success"] == one["success"] is False, suite
        assert merged["statistics"] == one["statistics"], suite
        for got, want in zip(merged["results"], one["results"], strict=True):
            config = got["expectation_config"]["type"], got["expectation_config"]["kwargs"]
            assert got["success"] == want["success"], config
            for key in ("element_count", "unexpected_count", "missing_count", "observed_value"):
                assert got["result"].get(key) == want["result"].get(key), (config, key)
    interactions = stored["recsys_interactions"]
    assert interactions["meta"]["batch_parameters"] == {"rows": N_EVENTS + 8, "parts": 5}


def test_print_summary(dirty_run: DirtyRun) -> None:
    _, result = dirty_run
    console = Console(record=True, width=200)
    print_summary(result, console)
    text = console.export_text()
    for name in ("interactions", "items", "users", "unknown_item_id (2)", "index.html"):
        assert name in text


@pytest.mark.parametrize(
    ("tables", "match", "where"),
    [
        (
            (make_interactions().drop(columns=["timestamp"]), make_items(), make_users()),
            r"interactions\.parquet.*'timestamp'",
            ("interactions", "timestamp"),
        ),
        ((make_interactions(), None, None), r"items\.parquet.*missing", ("items", None)),
        (
            (make_interactions(), make_items().assign(price=["cheap"] * N_ITEMS), make_users()),
            r"items\.parquet: column 'price'",
            ("items", "price"),
        ),
    ],
    ids=["missing column", "missing file", "uncastable column"],
)
def test_table_level_problems_raise_before_anything_is_written(
    tmp_path: Path, tables: tuple, match: str, where: tuple
) -> None:
    write_raw(tmp_path / "raw", *tables)
    with pytest.raises(DataValidationError, match=match) as err:
        run(tmp_path)
    assert (err.value.table, err.value.column) == where
    assert not (tmp_path / "validated").exists()


def test_too_many_bad_rows_raises(tmp_path: Path) -> None:
    """Without users.parquet (optional) and with 30% dangling item ids, interactions fails."""
    inter = make_interactions()
    inter.loc[: N_EVENTS * 3 // 10 - 1, "item_id"] = "gone"
    inter["user_id"] = "not_in_any_users_table"  # fine: users.parquet is absent
    write_raw(tmp_path / "raw", inter, make_items(), None)
    with pytest.raises(DataValidationError, match=r"interactions\.parquet") as err:
        run(tmp_path)
    message = str(err.value)
    assert "unknown_item_id" in message and "'item_id'" in message and "(18 rows)" in message
    assert (err.value.table, err.value.column, err.value.count) == ("interactions", "item_id", 18)
    # What is needed to debug it is written; nothing half-valid reaches the next stage.
    quarantined = pq.read_table(table_path(tmp_path / "quarantine", "interactions"))
    assert quarantined.num_rows == 18
    assert (tmp_path / "reports" / "data_docs" / "index.html").is_file()
    assert not table_path(tmp_path / "validated", "interactions").exists()
    assert not table_path(tmp_path / "quarantine", "users").exists()
