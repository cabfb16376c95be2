"""Dataset adapters: each layout, written small by the tests themselves, -> canonical tables.

Every test checks the written schema with pyarrow against ``recsys/core/schema.py`` (names and
types in canonical order, pass-through columns after), the row counts, and what the mapping did
to a few known rows. The broken-input tests check that errors name the file, the column and the
option that fixes it. One test imports the real ASOS DSF data when the shared folder has it; one
runs the real CLI: import -> validate -> features.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.adapters import (
    ADAPTERS,
    DatasetImportError,
    ImportSummary,
    get_adapter,
    replace_dataset,
)
from pipelines.adapters.base import CANONICAL
from pipelines.adapters.movielens import GENRES_100K
from recsys.core.schema import table_path
from recsys.core.settings import Settings
from tests.conftest import REPO, run_cli

ASOS_DIR = REPO.parent / "shared" / "data" / "asos"


def check_schema(out: Path, table: str, *extras: str) -> None:
    """``table`` in ``out``: canonical names and types in canonical order, then ``extras``."""
    schema = pq.read_schema(table_path(out, table))
    canonical = CANONICAL[table]
    assert [(f.name, f.type) for f in schema][: len(canonical)] == [
        (f.name, f.type) for f in canonical
    ], f"{table}: {schema}"
    assert tuple(schema.names[len(canonical) :]) == extras


def read(out: Path, table: str) -> pd.DataFrame:
    return pq.read_table(table_path(out, table)).to_pandas()


def utc(*args: int) -> pd.Timestamp:
    return pd.Timestamp(datetime(*args, tzinfo=UTC))


# ------------------------------------------------------------------------------ generic
def write_generic(folder: Path) -> dict[str, Path]:
    """A shop export with its own column names, epoch-ms times and event words."""
    folder.mkdir(parents=True, exist_ok=True)
    base_ms = int(datetime(2024, 3, 1, tzinfo=UTC).timestamp() * 1000)
    events = pd.DataFrame(
        {
            "cust": ["c1", "c1", "c2", "c2", "c3"],
            "sku": ["007", "007", "010", "007", "011"],
            "ts_ms": [base_ms + k * 60_123 for k in range(5)],
            "action": ["click", "buy", "click", "basket", "buy"],
            "amount": [None, 19.5, None, None, 5.0],
            "channel": ["web", "web", "app", "app", "web"],
        }
    )
    events.to_csv(folder / "events.csv", index=False)
    events.iloc[:2].assign(cust="c9").to_csv(folder / "later.csv", index=False)
    items = pd.DataFrame(
        {"sku": ["007", "010", "011"], "name": ["Tee", "Jeans", "Cap"],
         "cat": ["tops", "bottoms", "accessories"], "fabric": ["cotton", "denim", "wool"]}
    )  # fmt: skip
    items.to_csv(folder / "catalogue.csv", index=False)
    return {"interactions": folder / "events.csv", "holdout": folder / "later.csv",
            "items": folder / "catalogue.csv"}  # fmt: skip


GENERIC_MAP = "user_id=cust,item_id=sku,timestamp=ts_ms,event_type=action,price=amount,title=name"


def test_generic_csv_mapping(tmp_path: Path) -> None:
    files = write_generic(tmp_path / "src")
    out = tmp_path / "raw"
    summary = get_adapter("generic").import_dataset(
        out,
        **files,
        map=GENERIC_MAP + ",category=cat",
        event_map="purchase=buy,view=click,add_to_cart=basket",
        timestamp_unit="ms",
    )
    assert isinstance(summary, ImportSummary) and summary.format == "generic"
    assert summary.counts == {"interactions": 5, "holdout": 2, "items": 3}
    check_schema(out, "interactions", "channel")
    check_schema(out, "holdout", "channel")
    check_schema(out, "items", "fabric")
    assert not table_path(out, "users").exists()

    inter = read(out, "interactions").sort_values("timestamp").reset_index(drop=True)
    assert inter["event_type"].tolist() == ["view", "purchase", "view", "add_to_cart", "purchase"]
    assert inter["item_id"].tolist() == ["007", "007", "010", "007", "011"]  # zeros kept
    assert inter["timestamp"][4] == utc(2024, 3, 1, 0, 4, 0, 492_000)  # exact milliseconds
    assert inter["price"].tolist()[:2] == pytest.approx([float("nan"), 19.5], nan_ok=True)
    items = read(out, "items").set_index("item_id")
    assert items.loc["010", ["title", "category", "fabric"]].tolist() == [
        "Jeans", "bottoms", "denim",
    ]  # fmt: skip
    assert read(out, "holdout")["user_id"].tolist() == ["c9", "c9"]
    assert any("timestamps from 2024-03-01" in n for n in summary.notes)


def test_generic_parquet_without_items_or_event_column(tmp_path: Path) -> None:
    """Constant event type, a strptime format, and items derived from the interactions."""
    src = tmp_path / "orders.parquet"
    pd.DataFrame(
        {"customer": [1, 2, 2], "article": ["a", "b", "a"],
         "day": ["01/02/2024", "02/02/2024", "03/02/2024"], "qty": [1, 2, 1]}
    ).to_parquet(src)  # fmt: skip
    out = tmp_path / "raw"
    out.mkdir()
    table_path(out, "users").write_text("from another data set")
    summary = get_adapter("generic").import_dataset(
        out,
        interactions=src,
        map={"user_id": "customer", "item_id": "article", "timestamp": "day", "value": "qty"},
        event_type="purchase",
        timestamp_format="%d/%m/%Y",
    )
    assert summary.counts == {"interactions": 3, "items": 2}
    inter = read(out, "interactions")
    assert set(inter["event_type"]) == {"purchase"}
    assert inter["user_id"].tolist() == ["1", "2", "2"]  # ints become VARCHAR ids
    assert inter["timestamp"].tolist() == [utc(2024, 2, 1), utc(2024, 2, 2), utc(2024, 2, 3)]
    assert inter["value"].tolist() == [1.0, 2.0, 1.0]
    check_schema(out, "items")
    assert sorted(read(out, "items")["item_id"]) == ["a", "b"]
    assert any("no --items" in n for n in summary.notes)
    assert not table_path(out, "users").exists()  # would dangle against the new interactions


def test_one_source_column_can_fill_two_canonical_ones(tmp_path: Path) -> None:
    """A click log whose session id is the visitor id: once a DuckDB binder error ("Duplicate
    named argument")."""
    events = tmp_path / "clicks.csv"
    events.write_text("visitor,sku,ts,action\nv1,i1,2024-01-01T00:00:00Z,view\n"
                      "v1,i2,2024-01-01T00:01:00Z,view\n")  # fmt: skip
    get_adapter("generic").import_dataset(
        tmp_path / "raw", interactions=events,
        map="user_id=visitor,session_id=visitor,item_id=sku,timestamp=ts,event_type=action",
    )  # fmt: skip
    inter = read(tmp_path / "raw", "interactions")
    assert inter["user_id"].tolist() == inter["session_id"].tolist() == ["v1", "v1"]


def test_a_ragged_csv_names_its_first_bad_line(tmp_path: Path) -> None:
    """Rows with more or fewer fields than the header: once "no column 'user_id'" (the sniffer
    read the file as one column named after the header line)."""
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,timestamp,event_type\nu1,i1,2024-01-01,view\n"
                      "u2,i2,2024-01-01,view,extra\nu3,i3\n")  # fmt: skip
    with pytest.raises(DatasetImportError) as err:
        get_adapter("generic").import_dataset(tmp_path / "raw", interactions=events)
    message = str(err.value)
    assert "events.csv: line 3 does not have the header's 4 fields" in message
    assert "u2,i2,2024-01-01,view,extra" in message and "no column" not in message


def test_missing_mapped_column_names_file_and_column(tmp_path: Path) -> None:
    files = write_generic(tmp_path / "src")
    with pytest.raises(DatasetImportError) as err:
        get_adapter("generic").import_dataset(
            tmp_path / "raw", interactions=files["interactions"],
            map=GENERIC_MAP.replace("cust", "customer_id"), timestamp_unit="ms",
        )  # fmt: skip
    message = str(err.value)
    assert "events.csv" in message and "'customer_id'" in message
    assert "--map user_id=<your column>" in message and "cust" in message  # lists real columns
    with pytest.raises(DatasetImportError, match="--event-type purchase"):
        get_adapter("generic").import_dataset(
            tmp_path / "raw",
            interactions=files["interactions"],
            map="user_id=cust,item_id=sku,timestamp=ts_ms",
            timestamp_unit="ms",
        )


def test_malformed_timestamp_names_column_and_option(tmp_path: Path) -> None:
    src = tmp_path / "events.csv"
    pd.DataFrame(
        {"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "when": ["2024-01-02", "yesterday"]}
    ).to_csv(src, index=False)
    for fmt in ("%Y-%m-%d", None):
        with pytest.raises(DatasetImportError) as err:
            get_adapter("generic").import_dataset(
                tmp_path / "raw", interactions=src, map="timestamp=when",
                event_type="view", timestamp_format=fmt,
            )  # fmt: skip
        message = str(err.value)
        assert "events.csv" in message and "'when'" in message and "yesterday" in message
        assert "--timestamp-format" in message


def test_unknown_format_and_option_are_explained(tmp_path: Path) -> None:
    with pytest.raises(DatasetImportError, match="known formats: generic.*hm.*movielens.*asos"):
        get_adapter("criteo")
    with pytest.raises(DatasetImportError, match="--map: not an option of the 'hm' format"):
        get_adapter("hm").import_dataset(tmp_path, path=tmp_path, map="a=b")
    assert set(ADAPTERS) == {"generic", "hm", "movielens", "asos"}


# ------------------------------------------------------------------------------ H&M
def write_hm(folder: Path) -> Path:
    """The Kaggle layout in miniature: leading-zero article ids, repeated units, 10 days."""
    folder.mkdir(parents=True, exist_ok=True)
    articles = [f"0{108775015 + k}" for k in range(12)]
    customers = [f"{k:064x}" for k in range(30)]
    rows = []
    for c, customer in enumerate(customers):
        for day in range(10):
            if (c + day) % 3 == 0 or day == 9:
                rows.append((f"2020-09-{13 + day:02d}", customer, articles[(c + 2 * day) % 12]))
    rows.append(rows[0])  # a second unit of the same article on the same day
    rows.append(("2020-09-22", customers[1], "0999999999"))  # an article missing from articles.csv
    tx = pd.DataFrame(rows, columns=["t_dat", "customer_id", "article_id"])
    tx["price"] = 0.0254 + 0.001 * tx.index
    tx["sales_channel_id"] = 2
    tx.to_csv(folder / "transactions_train.csv", index=False)
    pd.DataFrame(
        {
            "article_id": articles,
            "product_code": [a[:7] for a in articles],
            "prod_name": [f"Strap top {k}" for k in range(12)],
            "product_type_name": ["Vest top"] * 12,
            "product_group_name": ["Garment Upper body"] * 12,
            "graphical_appearance_name": ["Solid"] * 12,
            "colour_group_name": ["Black", "White"] * 6,
            "department_name": ["Jersey Basic"] * 12,
            "index_name": ["Ladieswear"] * 12,
            "section_name": ["Womens Everyday Basics"] * 12,
            "garment_group_name": ["Jersey Basic"] * 12,
            "detail_desc": ["Jersey top with narrow shoulder straps."] * 12,
        }
    ).to_csv(folder / "articles.csv", index=False)
    pd.DataFrame(
        {
            "customer_id": customers,
            "FN": [1.0, None] * 15,
            "Active": [1.0, None] * 15,
            "club_member_status": ["ACTIVE"] * 30,
            "fashion_news_frequency": ["NONE", "Regularly"] * 15,
            "age": [None] + [20 + k for k in range(29)],
            "postal_code": ["0a1b" * 16] * 30,
        }
    ).to_csv(folder / "customers.csv", index=False)
    return folder


def test_hm_layout(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    summary = get_adapter("hm").import_dataset(out, path=write_hm(tmp_path / "hm"), holdout_days=1)
    n_tx = len(pd.read_csv(tmp_path / "hm" / "transactions_train.csv"))
    assert summary.counts["interactions"] + summary.counts["holdout"] == n_tx - 1  # one merged
    assert summary.counts["holdout"] == 31  # 30 customers on the last day + the dangling one
    assert summary.counts["items"] == 12 and summary.counts["users"] == 30
    check_schema(out, "interactions", "sales_channel_id")
    check_schema(out, "items", "product_code", "graphical_appearance_name", "department_name",
                 "section_name", "garment_group_name")  # fmt: skip
    check_schema(out, "users", "FN", "Active", "club_member_status", "fashion_news_frequency",
                 "postal_code")  # fmt: skip

    inter = read(out, "interactions")
    holdout = read(out, "holdout")
    assert inter["timestamp"].max() == utc(2020, 9, 21)
    assert holdout["timestamp"].min() == utc(2020, 9, 22)
    assert set(inter["event_type"]) == {"purchase"}
    first = inter[(inter["user_id"] == f"{0:064x}") & (inter["timestamp"] == utc(2020, 9, 13))]
    assert first["item_id"].tolist() == ["0108775015"]  # leading zero kept
    assert first["value"].tolist() == [2.0]  # two units, one event
    assert first["session_id"].tolist() == [f"{0:064x}-2020-09-13"]
    assert any("merged" in n for n in summary.notes)

    items = read(out, "items").set_index("item_id")
    row = items.loc["0108775016"]
    assert (row["title"], row["category"], row["product_type"], row["colour"],
            row["department"], row["product_code"]) == (
        "Strap top 1", "Garment Upper body", "Vest top", "White", "Ladieswear", "0108775"
    )  # fmt: skip
    assert row["description"].startswith("Jersey top") and row["price"] > 0
    users = read(out, "users").set_index("user_id")
    assert pd.isna(users.iloc[0]["age"]) and users.iloc[1]["age"] == 20


# ------------------------------------------------------------------------------ MovieLens
GENRE_FLAGS = ["0"] * len(GENRES_100K)


def write_ml100k(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text(
        "1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t4\t881251000\n"
    )
    comedy, drama = list(GENRE_FLAGS), list(GENRE_FLAGS)
    comedy[5] = comedy[8] = "1"  # Comedy|Drama: the first one is the category
    drama[8] = "1"
    lines = [
        "|".join(["10", "Toy Story (1995)", "01-Jan-1995", "", "http://imdb/10", *comedy]),
        "|".join(["20", 'Café "Society", The (1996)', "", "", "", *drama]),
    ]
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    genres = "".join(f"{g}|{k}\n" for k, g in enumerate(GENRES_100K))
    (folder / "u.genre").write_text(genres + "\n\n")
    return folder


def test_movielens_100k(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    summary = get_adapter("movielens").import_dataset(out, path=write_ml100k(tmp_path / "ml"))
    assert summary.counts == {"interactions": 3, "items": 2, "users": 2}
    check_schema(out, "interactions")
    check_schema(out, "items", "genres", "imdb_url")
    check_schema(out, "users", "occupation", "zip_code")
    inter = read(out, "interactions").sort_values(["user_id", "item_id"])
    assert inter["event_type"].tolist() == ["purchase", "view", "purchase"]  # rating >= 4
    assert inter["value"].tolist() == [5.0, 3.0, 4.0]
    assert inter["timestamp"].iloc[0] == pd.Timestamp(881250949, unit="s", tz="UTC")
    items = read(out, "items").set_index("item_id")
    assert items.loc["10", ["category", "genres"]].tolist() == ["Comedy", "Comedy|Drama"]
    assert items.loc["10", "launch_date"] == utc(1995, 1, 1)
    assert items.loc["20", "title"] == 'Café "Society", The (1996)'  # latin-1, quotes as is
    assert read(out, "users")["gender"].tolist() == ["male", "female"]
    assert any("rating" in n and ">= 4" in n for n in summary.notes)


def test_movielens_1m(tmp_path: Path) -> None:
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::1193::5::978300760\n2::1193::2::978298413\n")
    (folder / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama|Thriller\n"
        "2::Amélie (2001)::Comedy|Romance\n".encode("latin-1")
    )
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    out = tmp_path / "raw"
    summary = get_adapter("movielens").import_dataset(out, path=folder)
    assert summary.counts == {"interactions": 2, "items": 2, "users": 2}
    check_schema(out, "items", "genres")
    check_schema(out, "users", "age_group", "occupation", "zip_code")
    assert read(out, "interactions")["event_type"].tolist() == ["purchase", "view"]
    items = read(out, "items").set_index("item_id")
    assert items.loc["1193", "category"] == "Drama" and items.loc["2", "title"] == "Amélie (2001)"
    users = read(out, "users")
    assert pd.isna(users["age"][0]) and users["age"][1] == 56  # code 1 = under 18: no age
    assert users["age_group"].tolist() == [1, 56]


# ------------------------------------------------------------------------------ ASOS
def write_asos(folder: Path) -> Path:
    """The DSF layout with the real column types: bytes user ids, int32 product ids."""
    folder.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("dummyUserId", pa.binary()), ("productId", pa.int32())])
    train = [(b"PIXcm7Ru5KmntCy0yA1K", 10524048), (b"d0RILFB1hUzNSINMY4Ow", 9137713),
             (b"PIXcm7Ru5KmntCy0yA1K", 9137713)]  # fmt: skip
    valid = [(b"d0RILFB1hUzNSINMY4Ow", 10524048), (b"d0RILFB1hUzNSINMY4Ow", 10524048)]
    for name, pairs in (("train", train), ("valid", valid)):
        table = pa.Table.from_pylist([dict(zip(schema.names, p, strict=True)) for p in pairs],
                                     schema=schema)  # fmt: skip
        pq.write_table(table, folder / f"dsf_asos_{name}_with_alphanumeric_dummy_ids.parquet")
    (folder / "dsf_asos_dummy_users_with_alphanumeric_dummy_ids.csv").write_text(
        "PIXcm7Ru5KmntCy0yA1K\nd0RILFB1hUzNSINMY4Ow\nQHGAef0TI6dhn0wTogvW\n"
    )
    (folder / "dsf_asos_productIds.csv").write_text("10524048\n9137713\n")
    return folder


def test_asos_layout(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    summary = get_adapter("asos").import_dataset(
        out, path=write_asos(tmp_path / "asos"), reference_time="2021-06-01T00:00:00Z"
    )
    assert summary.counts == {"interactions": 3, "holdout": 2, "items": 2, "users": 3}
    for table in summary.counts:
        check_schema(out, table)
    inter, holdout = read(out, "interactions"), read(out, "holdout")
    assert set(inter["user_id"]) == {"PIXcm7Ru5KmntCy0yA1K", "d0RILFB1hUzNSINMY4Ow"}  # decoded
    assert set(inter["timestamp"]) == {utc(2021, 6, 1)} and set(inter["value"]) == {1.0}
    assert set(holdout["timestamp"]) == {utc(2021, 6, 2)}
    assert set(inter["event_type"]) == set(holdout["event_type"]) == {"purchase"}
    assert any("holdout: 1 duplicate" in n for n in summary.notes)  # reported, not dropped


@pytest.mark.e2e
def test_real_asos_dataset(tmp_path: Path) -> None:
    if not ASOS_DIR.is_dir():
        pytest.skip(f"ASOS DSF data not present at {ASOS_DIR}")
    out = tmp_path / "raw"
    summary = get_adapter("asos").import_dataset(out, path=ASOS_DIR)
    assert summary.counts["interactions"] == 165_042
    assert summary.counts["holdout"] == 35_567
    assert 43_000 < summary.counts["users"] < 44_000
    assert 29_000 < summary.counts["items"] < 30_000
    for table in summary.counts:
        check_schema(out, table)
    assert set(read(out, "holdout")["user_id"]) <= set(read(out, "users")["user_id"])


# ------------------------------------------------------------------------------ data root, CLI
def test_replace_dataset_keeps_model_runs(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    derived = [settings.raw_dir, settings.validated_dir, settings.quarantine_dir,
               settings.features_dir, settings.feast_dir]  # fmt: skip
    for folder in [*derived, settings.artifacts_dir]:
        folder.mkdir(parents=True)
        (folder / "x.parquet").write_text("x")
    staged = tmp_path / "staged"
    staged.mkdir()
    ts = pd.Timestamp("2024-03-01", tz="UTC")
    events = [("u1", "a", ts, "purchase"), ("u2", "b", ts, "view")]
    columns = ["user_id", "item_id", "timestamp", "event_type"]
    pd.DataFrame(events, columns=columns).to_parquet(staged / "interactions.parquet")
    pd.DataFrame({"item_id": ["a", "b"]}).to_parquet(staged / "items.parquet")
    removed = replace_dataset(settings, staged=staged)
    assert set(removed) == set(derived)
    assert (settings.artifacts_dir / "x.parquet").exists()
    assert sorted(p.name for p in settings.raw_dir.iterdir()) == [
        "interactions.parquet", "items.parquet"
    ]  # fmt: skip
    assert not settings.validated_dir.exists() and not settings.feast_dir.exists()
    assert not (settings.data_dir / "import.rejected").exists()  # it passed: nothing kept


@pytest.mark.e2e
def test_cli_import_validate_features(tmp_path: Path) -> None:
    """Import -> validate -> features through the real CLI, then imports that must fail.

    Imports are transactional (#14): the new data set is validated beside the old one and
    swapped in only when it passes. A header-only file (0 rows) or one whose rows are mostly
    unknown items once replaced everything first: validated, features and Feast were gone.
    """
    home = tmp_path / "home"
    hm = write_hm(tmp_path / "hm")
    proc = run_cli(home, "data", "import", "hm", str(hm), "--holdout-days", "1")
    assert "interactions" in proc.stdout and "holdout" in proc.stdout
    assert "recsys validate" in proc.stdout  # what to run next
    raw = Settings(home=home).raw_dir

    # A broken import fails cleanly and leaves the imported data set in place.
    events = write_generic(tmp_path / "src")["interactions"]
    bad = run_cli(
        home, "data", "import", "generic", "--interactions", str(events),
        "--map", "user_id=nope", check=False,
    )  # fmt: skip
    assert bad.returncode == 1
    message = " ".join(bad.stdout.split())  # rich wraps long lines
    assert "events.csv" in message and "'nope'" in message and "--map user_id=" in message
    assert table_path(raw, "holdout").exists()

    proc = run_cli(home, "validate")
    assert "holdout" in proc.stdout
    settings = Settings(home=home)
    quarantined = pq.read_table(table_path(settings.quarantine_dir, "holdout")).to_pandas()
    assert quarantined["reason"].tolist() == ["unknown_item_id"]  # the missing article
    validated = pq.read_table(table_path(settings.validated_dir, "holdout"))
    assert validated.num_rows == pq.read_metadata(table_path(raw, "holdout")).num_rows - 1

    proc = run_cli(home, "features")
    assert "user snapshots" in proc.stdout
    assert (settings.features_dir / "user_features.parquet").exists()

    kept = {p: p.read_bytes() for p in (
        table_path(settings.raw_dir, "interactions"),
        table_path(settings.validated_dir, "interactions"),
        settings.features_dir / "user_features.parquet",
    )}  # fmt: skip

    src = events.parent
    (src / "empty.csv").write_text("cust,sku,ts_ms,action\n")
    unknown = pd.DataFrame({"cust": ["c1", "c2", "c3"], "sku": ["007", "nope-1", "nope-2"],
                            "ts_ms": [1_700_000_000_000] * 3, "action": ["buy"] * 3})  # fmt: skip
    unknown.to_csv(src / "unknown.csv", index=False)
    (src / "items.csv").write_text("sku\n007\n")
    for events, needle in (
        (src / "empty.csv", "no rows"),
        (src / "unknown.csv", "unknown_item_id"),
    ):
        bad = run_cli(
            home, "data", "import", "generic", "--interactions", str(events),
            "--items", str(src / "items.csv"), "--map", GENERIC_MAP.rsplit(",", 2)[0],
            "--event-map", "purchase=buy", "--timestamp-unit", "ms", check=False,
        )  # fmt: skip
        message = " ".join(bad.stdout.split())
        assert bad.returncode == 1 and needle in message, message
        assert "data set is unchanged" in message
        for path, content in kept.items():
            assert path.read_bytes() == content, path
        assert not (settings.data_dir / "raw.importing").exists()
