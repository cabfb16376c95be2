"""Collections per model run behind an alias, on both backends: index, follow, roll back, prune.

Every test runs on the edge backend (a temporary folder) and on qdrant-client's local mode (one
in-memory client shared by the writer and the readers, as a server would be). Each collection's
points carry the run that built them in their payload, so a search tells which collection a
reader is on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from qdrant_client import QdrantClient

from recsys.core.settings import Settings, VectorStoreSettings
from recsys.core.vectorstore import (
    AliasError,
    CollectionNotFoundError,
    EdgeVectorStore,
    ItemPoint,
    QdrantServerVectorStore,
    ReadOnlyStoreError,
    SearchFilter,
    VectorStore,
    VectorStoreConfigError,
    collection_name,
    open_vector_store,
)
from recsys.core.vectorstore.base import check_name
from recsys.core.vectorstore.edge import READERS_DIR, reader_dir, remove_stale_readers

REPO_ROOT = Path(__file__).resolve().parents[1]
DIM, N = 4, 12
QUERY = np.ones(DIM, dtype=np.float32)

Opener = Callable[..., VectorStore]


def points_for(run: str) -> list[ItemPoint]:
    """Random vectors seeded by the run, each payload naming the run."""
    rng = np.random.default_rng(zlib.crc32(run.encode()))
    x = rng.normal(size=(N, DIM)).astype(np.float32)
    return [ItemPoint(i, x[i], {"run": run, "in_stock": bool(i % 2)}) for i in range(N)]


def index(store: VectorStore, run: str, alias: str = "items") -> tuple[str, str | None]:
    """What ``recsys index`` does: a new collection for the run, then move the alias."""
    name = store.new_collection_name(alias, run)
    store.create_collection(name, DIM, bool_fields=["in_stock"], run_id=run)
    store.upsert(points_for(run), collection=name)
    store.finalize(collection=name)
    return name, store.set_alias(alias, name)


def seen_run(store: VectorStore) -> str:
    """Which run's collection a store searches."""
    hits = store.search(QUERY, 3, SearchFilter(equals={"in_stock": True}))
    assert len(hits) == 3
    return hits[0].payload["run"]


def served(opener: Opener) -> str:
    """Which run's collection a newly opened reader (as the API opens one) searches."""
    return seen_run(opener(read_only=True))


@pytest.fixture(params=["edge", "qdrant"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """``opener(name="items", read_only=False)`` -> a store on shared storage."""
    opened: list[VectorStore] = []
    client = QdrantClient(location=":memory:") if request.param == "qdrant" else None

    def open_(name: str = "items", read_only: bool = False) -> VectorStore:
        if client is None:
            store: VectorStore = EdgeVectorStore(tmp_path / "qdrant" / name, read_only=read_only)
        else:
            store = QdrantServerVectorStore(name, client=client, read_only=read_only)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


# -- the alias and its readers ------------------------------------------------------------------


def test_reader_pins_what_the_alias_named_on_first_use(opener: Opener) -> None:
    writer, reader = opener(), opener(read_only=True)
    assert reader.current_collection is None and writer.alias_target("items") is None
    with pytest.raises(CollectionNotFoundError, match="recsys index"):
        reader.search(QUERY, 1)
    assert reader.health()["ok"] is False

    first, previous = index(writer, "r1")
    assert (first, previous) == ("items__r1", None)
    assert reader.current_collection == first and reader.current_run_id == "r1"
    assert seen_run(reader) == "r1"

    second, previous = index(writer, "r2")
    assert (second, previous) == ("items__r2", first)
    # Pinned: a request never meets another run's vectors before the API swaps its model.
    assert seen_run(reader) == "r1" and reader.current_collection == first
    reader = opener(read_only=True)
    assert reader.current_collection == second and reader.current_run_id == "r2"
    assert seen_run(reader) == "r2"
    health = reader.health()
    assert health["ok"] and health["collection"] == second and health["points"] == N
    assert health["run_id"] == "r2"

    assert writer.alias_target("items") == second
    assert writer.alias_history("items") == [first, second]
    assert [e.run_id for e in writer.alias_entries("items")] == ["r1", "r2"]
    assert writer.list_aliases() == {"items": second}
    assert writer.list_collections() == [first, second]


def test_rollback_walks_back_then_forward(opener: Opener) -> None:
    writer, reader = opener(), opener(read_only=True)
    for run in ("r1", "r2", "r3"):
        index(writer, run)
    assert seen_run(reader) == "r3"

    assert writer.rollback("items") == ("items__r3", "items__r2")
    assert seen_run(reader) == "r3" and served(opener) == "r2"
    # Rolling back again goes further back, not to r3 again.
    assert writer.rollback("items") == ("items__r2", "items__r1")
    assert writer.alias_history("items") == ["items__r1"]
    with pytest.raises(AliasError, match=r"Nothing to roll back to.*items__r1.*items__r3"):
        writer.rollback("items")

    # --to a collection outside the history moves forward and is recorded.
    assert writer.rollback("items", to="items__r3") == ("items__r1", "items__r3")
    assert writer.alias_history("items") == ["items__r1", "items__r3"]
    assert writer.rollback("items") == ("items__r3", "items__r1")
    assert served(opener) == "r1"
    with pytest.raises(AliasError, match="already points at"):
        writer.rollback("items", to="items__r1")
    with pytest.raises(CollectionNotFoundError, match=r"items__nope.*items__r2"):
        writer.rollback("items", to="items__nope")


def test_rollback_skips_collections_that_are_gone(opener: Opener) -> None:
    writer = opener()
    for run in ("r1", "r2", "r3"):
        index(writer, run)
    writer.drop_collection("items__r2")
    assert writer.rollback("items") == ("items__r3", "items__r1")
    assert writer.run_id_of("items__r1") == "r1"


def test_nothing_to_roll_back_names_what_exists(opener: Opener) -> None:
    writer = opener()
    with pytest.raises(AliasError, match=r"no alias or collection 'items'.*recsys index"):
        writer.rollback("items")
    index(writer, "r1")
    with pytest.raises(AliasError, match=r"points at 'items__r1'.*collections: \['items__r1'\]"):
        writer.rollback("items")


def test_prune_keeps_the_latest_collections(opener: Opener) -> None:
    writer, reader = opener(), opener(read_only=True)
    other = opener("other")
    index(other, "x", alias="other")  # another alias's collections are never touched
    dropped = []
    for run in ("r1", "r2", "r3", "r4"):
        index(writer, run)
        if run == "r1":
            assert seen_run(reader) == "r1"  # pins r1
        dropped += writer.prune("items", keep=2)
    assert dropped == ["items__r1", "items__r2"]
    # The reader is still on r1: edge keeps its open files (or private copy) alive; on a
    # server the collection is gone and the reader is told to open the store again.
    if isinstance(reader, EdgeVectorStore):
        assert seen_run(reader) == "r1"
    else:
        with pytest.raises(CollectionNotFoundError, match="open the store again"):
            seen_run(reader)
    assert served(opener) == "r4"
    assert writer.list_collections() == ["items__r3", "items__r4", "other__x"]
    assert writer.rollback("items") == ("items__r4", "items__r3")
    # r4 left the history but is younger than PRUNE_MIN_AGE_S: kept for a roll forward.
    writer.create_collection("items__wip", DIM)  # e.g. another index job still filling it
    assert writer.prune("items", keep=1) == []
    assert "items__r4" in writer.list_collections()
    with pytest.raises(AliasError, match="move the alias first"):
        writer.drop_collection("items__r3")
    with pytest.raises(ValueError, match="keep"):
        writer.prune("items", keep=0)


def test_legacy_plain_collection_keeps_serving_then_is_adopted(opener: Opener) -> None:
    legacy = opener()
    legacy.create_collection("items", DIM, bool_fields=["in_stock"])  # as before aliases
    legacy.upsert(points_for("legacy"))
    legacy.finalize()
    legacy.close()

    reader = opener(read_only=True)
    assert reader.current_collection == "items" and seen_run(reader) == "legacy"
    assert reader.current_run_id is None  # serve it with artifacts/current, as before

    writer = opener()
    assert writer.alias_target("items") == "items" and writer.alias_history("items") == ["items"]
    name, previous = index(writer, "r1")
    # The server cannot have a collection and an alias of one name: it keeps a copy.
    assert previous in {"items", "items__legacy"}
    assert writer.alias_history("items") == [previous, name]
    assert served(opener) == "r1"

    assert writer.rollback("items") == (name, previous)
    assert served(opener) == "legacy" and opener(read_only=True).count() == N


# -- names and read-only stores -----------------------------------------------------------------


def test_collection_names(opener: Opener) -> None:
    assert collection_name("items", "20261122T203000") == "items__20261122T203000"
    assert collection_name("items", "run 7/2026:11") == "items__run-7-2026-11"
    for bad in ("../etc", "aliases", "", ".hidden", "a b"):
        with pytest.raises(VectorStoreConfigError):
            check_name(bad)
    writer = opener()
    index(writer, "r1")
    assert writer.new_collection_name("items", "r1") == "items__r1-2"  # never overwritten
    assert index(writer, "r1") == ("items__r1-2", "items__r1")
    assert writer.run_id_of("items__r1-2") == "r1"
    with pytest.raises(CollectionNotFoundError, match=r"'nope'.*existing"):
        writer.set_alias("items", "nope")
    with pytest.raises(Exception, match="already exists"):
        writer.create_collection("items__r1", DIM)


def test_read_only_stores_refuse_writes(opener: Opener) -> None:
    writer = opener()
    index(writer, "r1")
    index(writer, "r2")
    reader = opener(read_only=True)
    for write in (
        lambda: reader.create_collection("items__x", DIM),
        lambda: reader.upsert(points_for("x")),
        lambda: reader.set_alias("items", "items__r1"),
        lambda: reader.rollback("items"),
        lambda: reader.drop_collection("items__r1"),
        lambda: reader.prune("items", keep=1),
    ):
        with pytest.raises(ReadOnlyStoreError, match="read_only=False"):
            write()
    assert reader.alias_history("items") == ["items__r1", "items__r2"]  # reading is fine


def test_open_vector_store_follows_the_configured_alias(tmp_path: Path) -> None:
    cfg = VectorStoreSettings(collection="catalogue")
    writer = open_vector_store(cfg, tmp_path)
    assert isinstance(writer, EdgeVectorStore) and not writer.read_only
    index(writer, "r1", alias="catalogue")
    reader = open_vector_store(cfg, tmp_path, read_only=True)
    assert reader.read_only and reader.current_collection == "catalogue__r1"
    assert (tmp_path / "qdrant" / "aliases" / "catalogue.json").is_file()
    pointer = json.loads((tmp_path / "qdrant" / "aliases" / "catalogue.json").read_text())
    assert pointer["target"] == "catalogue__r1" and pointer["run_id"] == "r1"
    writer.close()
    reader.close()


# -- several processes on one edge folder -------------------------------------------------------

CHILD = """
import json, sys, time
from pathlib import Path
from recsys.core.vectorstore import EdgeVectorStore
path, ready, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
store = EdgeVectorStore(path, read_only=True)
first = [(h.id, h.payload["run"]) for h in store.search([1.0, 1.0, 1.0, 1.0], 5)]
ready.touch()
deadline = time.time() + 30
while not go.exists() and time.time() < deadline:   # both children hold their copy here
    time.sleep(0.02)
again = [(h.id, h.payload["run"]) for h in store.search([1.0, 1.0, 1.0, 1.0], 5)]
print(json.dumps({"first": first, "again": again, "copy": str(store.health()["path"])}))
if sys.argv[4] == "close":
    store.close()
else:
    import os
    os._exit(0)  # killed: no close, no atexit; a later reader must clean up after it
"""


@pytest.mark.e2e
def test_edge_several_processes_serve_one_collection(tmp_path: Path) -> None:
    root = tmp_path / "qdrant"
    writer = EdgeVectorStore(root / "items")
    index(writer, "r1")
    writer.close()
    expected = [(h.id, "r1") for h in EdgeVectorStore(root / "items").search(QUERY, 5)]

    # What the engine does on its own: a second open of the same folder fails.
    direct = EdgeVectorStore(root / "items")
    assert direct.count() == N
    with pytest.raises(Exception, match="open elsewhere"):
        EdgeVectorStore(root / "items").count()

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    go = tmp_path / "go"
    modes = ("close", "killed")
    command = [sys.executable, "-c", CHILD, str(root / "items")]
    children = [
        subprocess.Popen(
            [*command, str(tmp_path / f"ready{i}"), str(go), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i, mode in enumerate(modes)
    ]
    try:
        deadline = time.time() + 60
        while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
            assert time.time() < deadline, "children did not open their copies"
            assert all(c.poll() is None for c in children), children[0].communicate()
            time.sleep(0.02)
        # Two processes plus this one's writable store have the collection open at once.
        assert direct.search(QUERY, 5)[0].id == expected[0][0]
        assert len(list((root / READERS_DIR).iterdir())) == 2
    finally:
        go.touch()
        outputs = [c.communicate(timeout=60) for c in children]
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
        result = json.loads(out)
        assert (
            [tuple(h) for h in result["first"]] == expected == [tuple(h) for h in result["again"]]
        )
        assert f"{os.sep}{READERS_DIR}{os.sep}" not in result["copy"]  # health names the source
    direct.close()

    # The closed child removed its copy; the killed one left its folder, unlocked.
    left = list((root / READERS_DIR).iterdir())
    assert len(left) == 1 and any(left[0].iterdir())
    assert remove_stale_readers(root / READERS_DIR) == left
    assert not any((root / READERS_DIR).iterdir())

    # This process's own folder is locked, so another cleaner leaves it alone.
    mine = reader_dir(root)
    assert remove_stale_readers(root / READERS_DIR) == [] and mine.is_dir()


def test_edge_reader_copies_are_private_and_removed_on_close(tmp_path: Path) -> None:
    writer = EdgeVectorStore(tmp_path / "items")
    index(writer, "r1")
    reader = EdgeVectorStore(tmp_path / "items", read_only=True)
    assert seen_run(reader) == "r1"  # while the writer has items__r1 open
    copies = reader_dir(tmp_path)
    assert len(list(copies.glob("items__r1.*"))) == 1
    index(writer, "r2")
    reader.close()
    assert list(copies.glob("items__*")) == []
    # The original folders were never locked by the reader: the writer can drop r1.
    assert writer.prune("items", keep=1) == ["items__r1"]
    writer.close()


# -- the index stage and `recsys rollback` ------------------------------------------------------


def test_build_index_and_cli_rollback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``build_index`` over real run folders (item vectors and vocabulary written through
    ``Run``, only the catalogue payloads stubbed), then ``run_rollback``."""
    import typer

    import pipelines.index as index_stage
    from recsys.cli import run_rollback
    from recsys.core.run import Run

    settings = Settings(home=tmp_path, vector_store=VectorStoreSettings(keep_collections=2))
    item_ids = [f"i{i:03d}" for i in range(N)]
    state = {"run": ""}
    monkeypatch.setattr(
        index_stage,
        "item_payloads",
        lambda settings, ids: pd.DataFrame({"item_id": ids, "title": state["run"]}),
    )

    def train(run_id: str) -> None:
        state["run"] = run_id
        run = Run(settings.artifacts_dir / run_id)
        run.path.mkdir(parents=True)
        vectors = np.stack([np.asarray(p.vector) for p in points_for(run_id)])
        run.write_item_vectors(np.vstack([np.zeros((1, DIM), np.float32), vectors]))
        run.write_table("item_vocab", pd.DataFrame({"item_id": item_ids}))
        run.set_current()

    summaries = []
    for run in ("20261120T100000", "20261121T100000", "20261122T100000"):
        train(run)
        summaries.append(index_stage.build_index(settings))
    first, second, third = summaries
    assert (first.collection, first.previous) == ("items__20261120T100000", None)
    assert (second.previous, third.previous) == (first.collection, second.collection)
    assert third.dropped == (first.collection,)  # keep_collections=2
    assert third.health["ok"] and third.health["collection"] == third.collection
    assert third.health["run_id"] == "20261122T100000" and third.points == N

    def serving() -> VectorStore:  # what the API opens when the alias has moved
        return open_vector_store(settings.vector_store, settings.home, read_only=True)

    store = serving()
    hit = store.search(QUERY, 1)[0]
    store.close()
    assert hit.payload["title"] == "20261122T100000"
    assert hit.payload["item_id"] == item_ids[hit.id - 1]  # point id = vocabulary index + 1

    run_rollback(settings, None)
    assert serving().current_run_id == "20261121T100000"
    assert (settings.artifacts_dir / "current").read_text() == "20261121T100000"
    with pytest.raises(typer.Exit):
        run_rollback(settings, None)  # the first collection was pruned
    run_rollback(settings, third.collection)
    assert serving().current_collection == third.collection
    assert (settings.artifacts_dir / "current").read_text() == "20261122T100000"
