"""The web console (#15): its readers, its JSON routes against the real pipeline output, and
its pages in a real headless browser.

The browser is Debian's Chromium driven by Playwright (``make test`` installs it with apt;
``playwright install`` is never run: it downloads a browser, and CI has no internet). Without
it the browser tests fail, saying how to install it: a console nobody looked at in a browser
is not tested. Each browser test saves a PNG per page under its ``tmp_path`` and prints where.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from recsys.core.run import Run
from recsys.core.schema import USER_FEATURES, table_path
from recsys.core.settings import ApiKey, ServeSettings, Settings
from recsys.core.vectorstore import EdgeVectorStore, ItemPoint
from serving.app import CONSOLE_DIR, create_app
from serving.console_data import alias_summary, docs_file, evaluation_summary, validation_summary
from serving.security import hash_key
from tests.conftest import REPO, LiveApi, copy_home, run_cli

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
INSTALL_HINT = (
    "the console's browser test drives Debian's Chromium at /usr/bin/chromium: install it with "
    "`make browser` (what `make test` runs first), i.e. `apt-get install -y chromium "
    "fonts-liberation`; never `playwright install` (it downloads a browser)"
)
METHODS = ("behaviour", "content", "sessions", "hybrid")
READ_KEY = "rk_console-test-reader"


# --------------------------------------------------------------------------- unit: readers
def test_data_docs_never_serve_outside_their_folder(tmp_path: Path) -> None:
    docs = tmp_path / "reports" / "data_docs"
    (docs / "validations" / "x").mkdir(parents=True)
    (docs / "index.html").write_text("<h1>docs</h1>")
    (docs / "validations" / "x" / "page.html").write_text("page")
    (tmp_path / "secret.txt").write_text("not for the web")
    (docs / "leak").symlink_to(tmp_path / "secret.txt")

    assert docs_file(docs, "") == docs / "index.html"  # a folder means its index.html
    assert docs_file(docs, "validations/x/page.html") == docs / "validations" / "x" / "page.html"
    for outside in ("../secret.txt", "../../etc/passwd", "/etc/passwd", "leak", "a\x00b",
                    "validations/../../secret.txt", "validations/x", "missing.html"):  # fmt: skip
        assert docs_file(docs, outside) is None, outside


def _settings(home: Path) -> Settings:
    return Settings(home=home)


def test_evaluation_summary_reads_recsys_evaluate_output(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert evaluation_summary(settings, "run1") is None  # `recsys evaluate` never ran
    metrics = {"recall@10": 0.2, "ndcg@10": 0.1, "hit@10": 0.3, "map@12": 0.05,
               "recall@100": 0.6, "coverage@10": math.nan, "users": 50}  # fmt: skip
    body = {  # the schema of pipelines/evaluate.py's docstring
        "dataset": {"eval_users": 50},
        "protocol": {
            "split": "temporal",
            "events": "purchase",
            "ks": [10, 20, 100],
            "map_ks": [12],
            "cutoff": "2026-11-25",
        },  # fmt: skip
        "models": {"ease": {"overall": metrics}, "als": {"error": "out of memory"}},
        "served": {
            "overall": {**metrics, "recall@10": 0.25},
            "run": "run0",
            "top10_source_share": {"two_tower": 0.5},
        },  # fmt: skip
        "created_at": "2026-12-02T00:00:00+00:00",
    }
    path = settings.reports_dir / "evaluation" / "evaluation.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(body))  # NaN as Python writes it

    summary = evaluation_summary(settings, "run1")
    assert summary is not None
    assert summary["columns"] == ["recall@10", "ndcg@10", "hit@10", "map@12", "recall@100",
                                  "coverage@10"]  # fmt: skip
    rows = {r["model"]: r for r in summary["rows"]}
    assert rows["ease"]["metrics"]["recall@10"] == 0.2
    assert rows["ease"]["metrics"]["coverage@10"] is None  # NaN is no JSON number
    assert rows["als"]["error"] == "out of memory" and rows["als"]["metrics"] == {}
    assert rows["served pipeline"]["metrics"]["recall@10"] == 0.25
    assert summary["stale"] is True  # it scored run0, run1 is served
    assert evaluation_summary(settings, "run0")["stale"] is False  # type: ignore[index]
    path.write_text("{not json")
    assert evaluation_summary(settings, "run0") is None  # a broken file: shown as absent


def test_validation_summary_reads_the_gx_result_store(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert validation_summary(settings) is None  # `recsys validate` never ran
    store = settings.reports_dir / "gx" / "gx" / "uncommitted" / "validations"
    docs = settings.reports_dir / "data_docs"
    for run, ok in (("20261201T000000.000000Z", False), ("20261202T000000.000000Z", True)):
        result = store / "recsys_items" / "__none__" / run / "recsys_raw-items.json"
        result.parent.mkdir(parents=True)
        stats = {"evaluated_expectations": 4, "successful_expectations": 4 if ok else 3,
                 "unsuccessful_expectations": 0 if ok else 1}  # fmt: skip
        result.write_text(json.dumps({"success": ok, "statistics": stats,
                                      "meta": {"validation_time": run}}))  # fmt: skip
        page = docs / "validations" / result.relative_to(store).with_suffix(".html")
        page.parent.mkdir(parents=True)
        page.write_text("report")
    (docs / "index.html").write_text("docs")
    frame = pa.table({"item_id": ["a", "b", "c"]})
    settings.validated_dir.mkdir(parents=True)
    settings.quarantine_dir.mkdir(parents=True)
    pq.write_table(frame, table_path(settings.validated_dir, "items"))
    pq.write_table(frame.slice(0, 1), table_path(settings.quarantine_dir, "items"))

    summary = validation_summary(settings)
    assert summary is not None and summary["success"] is True  # the latest run counts
    (table,) = summary["tables"]
    assert table["table"] == "items" and (table["passed"], table["failed"]) == (4, 0)
    assert (table["rows_valid"], table["rows_quarantined"]) == (3, 1)
    assert table["page"] == ("/data-docs/validations/recsys_items/__none__/"
                             "20261202T000000.000000Z/recsys_raw-items.html")  # fmt: skip
    assert summary["data_docs"] == "/data-docs/"


def test_alias_summary_shows_a_rollback_command_per_earlier_collection(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path / "qdrant" / "items")
    vectors = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    try:
        assert alias_summary(store, "items", None)["history"] == []  # nothing indexed
        names = []
        for run in ("r1", "r2", "r3"):
            name = store.new_collection_name("items", run)
            store.create_collection(name, 3, run_id=run)
            store.upsert([ItemPoint(i, vectors[i], {}) for i in range(4)], collection=name)
            store.finalize(collection=name)
            store.set_alias("items", name)
            names.append(name)
        store.drop_collection(names[0])  # pruned: no longer a rollback target

        summary = alias_summary(store, "items", serving=names[1])
    finally:
        store.close()
    assert [e["collection"] for e in summary["history"]] == names[::-1]  # newest first
    current, previous, pruned = summary["history"]
    assert current["current"] and current["rollback_command"] is None
    assert previous["rollback_command"] == f"recsys rollback --to {names[1]}"
    assert previous["run_id"] == "r2" and previous["at"]
    assert not pruned["exists"] and pruned["rollback_command"] is None
    assert summary["rollback_default"] == "recsys rollback"
    assert summary["rollback_default_target"] == names[1]
    assert summary["serving"] == names[1] and summary["current"] == names[2]


def test_console_files_fetch_nothing_from_elsewhere_and_ship_in_the_package() -> None:
    files = {p.name: p.read_text() for p in CONSOLE_DIR.iterdir() if p.is_file()}
    assert {"index.html", "console.js", "console.css"} <= set(files)
    for name, text in files.items():
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), name
        assert "@import" not in text and "url(http" not in text, name
    page = files["index.html"]
    assert '<script src="/console/console.js"' in page and "/console/console.css" in page
    assert "<script>" not in page and " style=" not in page  # nothing inline: the CSP allows none
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["serving"]
    shipped = {p.name for pattern in patterns for p in (REPO / "serving").glob(pattern)}
    assert set(files) <= shipped


# --------------------------------------------------------------------------- the JSON routes
@pytest.fixture(scope="module")
def client(pipeline_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(pipeline_settings)) as c:
        yield c


@pytest.fixture(scope="module")
def catalogue(pipeline_settings: Settings) -> pd.DataFrame:
    return pd.read_parquet(table_path(pipeline_settings.validated_dir, "items")).set_index(
        "item_id"
    )


def test_catalogue_search_and_filters_match_the_catalogue(client, catalogue) -> None:
    everything = client.get("/items", params={"limit": 100}).json()
    assert everything["total"] == len(catalogue)
    bought = [i["purchases"] for i in everything["items"]]
    assert bought == sorted(bought, reverse=True)  # most bought first
    assert set(everything["facets"]["category"]) == set(catalogue["category"].dropna())
    assert set(everything["facets"]["department"]) == set(catalogue["department"].dropna())
    second = client.get("/items", params={"limit": 10, "offset": 10}).json()
    assert [i["item_id"] for i in second["items"]] == [
        i["item_id"] for i in everything["items"][10:20]
    ]

    word = str(catalogue["title"].iloc[0]).split()[-1]
    found = client.get("/items", params={"q": word.upper(), "limit": 100}).json()
    expected = catalogue["title"].str.casefold().str.contains(word.casefold(), regex=False)
    assert found["total"] == int(expected.sum()) > 0
    assert all(word.casefold() in i["title"].casefold() for i in found["items"])

    category = str(catalogue["category"].value_counts().index[0])
    max_price = float(catalogue["price"].median())
    params = {"category": category, "max_price": max_price, "in_stock": True, "limit": 100}
    filtered = client.get("/items", params=params).json()
    matching = catalogue[(catalogue["category"] == category) & (catalogue["price"] <= max_price)
                         & catalogue["in_stock"].fillna(True)]  # fmt: skip
    assert {i["item_id"] for i in filtered["items"]} == set(matching.index)

    assert client.get("/items", params={"q": "no such thing zzz"}).json()["total"] == 0
    for bad in ({"limit": 0}, {"offset": -1}, {"max_price": 0}, {"in_stock": "maybe"}):
        assert client.get("/items", params=bad).status_code == 422, bad


def test_an_item_page_has_the_catalogue_details(client, catalogue) -> None:
    item_id = str(catalogue.index[0])
    body = client.get(f"/items/{item_id}").json()
    row = catalogue.loc[item_id]
    assert body["title"] == row["title"] and body["category"] == row["category"]
    assert body["colour"] == row["colour"] and body["department"] == row["department"]
    assert body["price"] == pytest.approx(row["price"])
    assert body["in_stock"] is bool(row["in_stock"]) and body["purchases"] >= 0
    missing = client.get("/items/no-such-item")
    assert missing.status_code == 404 and "no-such-item" in missing.json()["detail"]


def test_top_shoppers_and_what_the_recommendations_know_of_them(client, pipeline_settings) -> None:
    features = pd.read_parquet(pipeline_settings.features_dir / f"{USER_FEATURES}.parquet")
    latest = features.sort_values("event_timestamp").groupby("user_id").tail(1).set_index("user_id")
    users = client.get("/users", params={"limit": 5}).json()["users"]
    assert len(users) == 5
    assert [u["purchases"] for u in users] == sorted((u["purchases"] for u in users), reverse=True)
    assert users[0]["purchases"] == latest["purchases_total"].max()

    top = users[0]["user_id"]
    history = client.get(f"/users/{top}/history", params={"limit": 200}).json()
    ids = [i["item_id"] for i in history["purchases"]]
    assert set(latest.loc[top, "purchased_items"]) <= set(ids)  # the batch history, all of it
    assert len(ids) == len(set(ids)) and all(i["title"] for i in history["purchases"])
    assert history["profile"]["fav_category"] == latest.loc[top, "fav_category"]
    assert history["profile"]["purchases_total"] == latest.loc[top, "purchases_total"]
    recs = client.get(f"/users/{top}/recommendations", params={"k": 20}).json()["items"]
    assert not {r["item_id"] for r in recs} & set(ids)  # what they bought is never proposed
    short = client.get(f"/users/{top}/history", params={"limit": 2}).json()
    assert [i["item_id"] for i in short["purchases"]] == ids[:2]

    unknown = client.get("/users/nobody-ever/history")
    assert unknown.status_code == 404 and "nobody-ever" in unknown.json()["detail"]
    assert client.get(f"/users/{top}/history", params={"limit": 0}).status_code == 422
    assert client.get("/users", params={"limit": 101}).status_code == 422


def test_the_model_page_reads_the_run_validation_and_alias(client, pipeline_settings) -> None:
    body = client.get("/model").json()
    served = body["model_version"]
    assert served == client.get("/health").json()["model"]["version"]
    assert body["run"]["run_id"] == served and body["run"]["complete"]
    manifest = Run(pipeline_settings.artifacts_dir / served).manifest
    assert body["run"]["metrics"]["two_tower"] == manifest["metrics"]["two_tower"]
    assert "home" not in body["run"]["data"]  # no server paths on a page
    assert set(body["run"]["ranking"]["sources"]) == set(body["sources"])

    validation = body["validation"]
    assert validation["data_docs"] == "/data-docs/"
    assert {t["table"] for t in validation["tables"]} >= {"items", "interactions"}
    for table in validation["tables"]:
        assert table["passed"] + table["failed"] == table["expectations"]
        assert client.get(table["page"]).status_code == 200

    aliases = body["aliases"]
    assert aliases["alias"] == pipeline_settings.vector_store.collection
    assert [e["current"] for e in aliases["history"]].count(True) == 1
    for entry in aliases["history"]:
        if entry["current"] or not entry["exists"]:
            assert entry["rollback_command"] is None
        else:
            assert entry["rollback_command"] == f"recsys rollback --to {entry['collection']}"


def test_the_console_page_and_the_data_docs_are_served_read_only(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset, kind in (("console.js", "javascript"), ("console.css", "text/css")):
        answer = client.get(f"/console/{asset}")
        assert answer.status_code == 200 and kind in answer.headers["content-type"]
    assert client.get("/console/nothing.js").status_code == 404

    moved = client.get("/data-docs", follow_redirects=False)
    assert moved.status_code == 307 and moved.headers["location"].endswith("/data-docs/")
    docs = client.get("/data-docs/")
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
    for escape in ("/data-docs/..%2F..%2Fartifacts%2Fcurrent", "/data-docs/%2e%2e/%2e%2e/feast",
                   "/data-docs/missing.html"):  # fmt: skip
        assert client.get(escape).status_code == 404, escape
    assert client.post("/data-docs/index.html").status_code == 405

    schema = client.get("/openapi.json").json()["paths"]
    for path in ("/items", "/items/{item_id}", "/users", "/users/{user_id}/history", "/model"):
        assert "get" in schema[path], path
    assert {"404", "503", "422"} <= set(schema["/users/{user_id}/history"]["get"]["responses"])
    assert "/" not in schema and not any(p.startswith("/data-docs") for p in schema)


def test_with_keys_required_the_data_needs_a_key_and_the_page_does_not(pipeline_settings) -> None:
    serve = ServeSettings(require_key_for_reads=True, alias_poll_s=0,
                          api_keys={"console": ApiKey(sha256=hash_key(READ_KEY),
                                                      scopes=frozenset({"read"}))})  # fmt: skip
    settings = pipeline_settings.model_copy(update={"serve": serve})
    with TestClient(create_app(settings)) as strict:
        assert strict.get("/").status_code == 200  # the page: code, no data
        assert strict.get("/console/console.js").status_code == 200
        key = {"X-API-Key": READ_KEY}
        for path in ("/model", "/users", "/items", "/data-docs/"):
            assert strict.get(path).status_code == 401, path
            assert strict.get(path, headers=key).status_code == 200, path


# --------------------------------------------------------------------------- in a browser
@pytest.fixture(scope="module")
def console_home(pipeline_home: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root as an operator has it after a while: the pipeline's output with its reports,
    indexed twice (an earlier collection to roll back to) and scored by `recsys evaluate`."""
    source = pipeline_home[0]
    home = copy_home(source, tmp_path_factory.mktemp("console") / "home")
    skip = shutil.ignore_patterns("evaluation")  # scored below, for this copy's runs
    shutil.copytree(source / "reports", home / "reports", ignore=skip)
    run_cli(home, "index")
    run_cli(home, "evaluate", "--no-tune")
    return home


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium; a failure (not a skip) when it is not installed."""
    if not CHROMIUM.exists():
        pytest.fail(INSTALL_HINT)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package playwright is missing: `pip install -e '.[dev]'` "
                    "(`make install`)")  # fmt: skip
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Visit:
    """A browser tab on a live API that records what a page must not do: fetch from another
    origin or throw; screenshots go to ``out``."""

    def __init__(self, browser: Any, api: LiveApi, out: Path, **context: Any) -> None:
        self.api, self.out = api, out
        self.context = browser.new_context(viewport={"width": 1366, "height": 900}, **context)
        self.page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.elsewhere: list[str] = []
        self.errors: list[str] = []
        self.shots: list[Path] = []
        self.page.on("request", self._request)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _request(self, request: Any) -> None:
        if not request.url.startswith((self.api.url, "data:")):
            self.elsewhere.append(request.url)

    def go(self, route: str) -> None:
        self.page.goto(f"{self.api.url}/{route}")

    def shot(self, name: str) -> Path:
        path = self.out / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.shots.append(path)
        print(f"screenshot {name}: {path}")
        return path

    def close(self) -> None:
        self.context.close()
        assert not self.errors, self.errors
        assert not self.elsewhere, f"the console fetched from elsewhere: {self.elsewhere}"


def _settled(page: Any, selector: str) -> None:
    """Wait until ``selector`` holds no loading placeholder and is not busy."""
    page.wait_for_function(
        "s => { const el = document.querySelector(s); return el && !el.querySelector('.loading')"
        " && !el.hasAttribute('aria-busy'); }",
        arg=selector,
    )


def test_the_console_in_a_real_browser(console_home: Path, browser: Any, tmp_path: Path) -> None:
    """Load a shopper, see 10 cards, filter, click one to its item page, build a session of
    three clicks (the answer changes each time), read the model page; keyboard and a narrow
    screen too."""
    from playwright.sync_api import expect

    api = LiveApi(console_home).start()
    visit = Visit(browser, api, tmp_path)
    page = visit.page
    try:
        status, body = api.request("GET", "/users?limit=3")
        assert status == 200, body
        user = body["users"][0]["user_id"]

        # a shopper: history beside 10 recommendation cards
        visit.go(f"#/user/{user}")
        cards = page.locator("#recs article.card")
        expect(cards).to_have_count(10)
        expect(page.locator("#history-purchases li").first).to_be_visible()
        first = cards.first
        expect(first.locator(".swatch")).to_have_count(1)
        expect(first.locator(".price")).to_have_text(re.compile(r"^\d+\.\d\d$"))
        expect(first.locator(".score")).to_have_text(re.compile(r"^-?\d+\.\d+(e-\d+)?$"))
        expect(first.locator(".chip-src").first).to_be_visible()
        expect(first.locator(".reasons li").first).to_be_visible()
        visit.shot("user")

        # the filters go into the API's query parameters
        category = api.request("GET", "/items?limit=1")[1]["facets"]["category"][0]
        page.select_option("#f-category", category)
        page.select_option("#f-in_stock", "true")
        with page.expect_request(re.compile(r"/recommendations\?")) as sent:
            page.click("#filters button[type=submit]")
        assert f"category={category}" in sent.value.url and "in_stock=true" in sent.value.url
        _settled(page, "#recs")
        metas = page.locator("#recs .card-meta").all_text_contents()
        assert metas and all(m.startswith(category) for m in metas), metas
        visit.shot("user-filtered")

        # a card's title is a link to its item page
        item_id = str(first.get_attribute("data-item-id") or "")
        card = page.locator(f'#recs article.card[data-item-id="{item_id}"]')
        if not card.count():  # the filtered answer: take its first card
            card = page.locator("#recs article.card").first
            item_id = str(card.get_attribute("data-item-id"))
        title = card.locator(".card-title a").text_content()
        card.locator(".card-title a").click()
        expect(page).to_have_url(re.compile(rf"#/item/{re.escape(item_id)}$"))
        expect(page.locator("#page-title")).to_have_text(str(title))
        for method in METHODS:
            neighbours = page.locator(f'#similar [data-method="{method}"] .row-item')
            expect(neighbours.first).to_be_visible()
        _settled(page, "#bought-together")
        visit.shot("item")

        # the keyboard reaches the neighbours' links, shows where it is, and follows them
        page.locator("#page-title").focus()
        for _ in range(40):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.matches('#similar a')"):
                break
        else:
            raise AssertionError("Tab never reached a similar item's link")
        ring = page.evaluate("getComputedStyle(document.activeElement).boxShadow")
        assert ring and ring != "none", ring
        target = page.evaluate("document.activeElement.getAttribute('href')")
        page.keyboard.press("Enter")
        expect(page).to_have_url(re.compile(re.escape(target) + "$"))

        # a page whose answer comes after the user moved on does not replace the new page
        page.evaluate(
            """async (item) => {
                const seen = new Promise((r) => addEventListener("hashchange", r, { once: true }));
                location.hash = "#/item/" + encodeURIComponent(item);
                await seen;  // the item page has asked the API and awaits its answer
                location.hash = "#/session";
            }""",
            item_id,
        )
        page.wait_for_load_state("networkidle")
        expect(page.locator("#page-title")).to_have_text("Session simulator")

        # an anonymous session of three clicks: the answer changes with each
        visit.go("#/session")
        page.click("#session-clear")
        _settled(page, "#catalogue")
        recs = page.locator("#session-recs")
        expect(recs.locator("article.card")).to_have_count(10)
        _settled(page, "#session-recs")
        answers = [recs.get_attribute("data-answer")]
        clicked: list[str] = []
        for n in range(3):
            row = page.locator("#catalogue-list li").nth(4 * n)
            clicked.append(str(row.get_attribute("data-item-id")))
            with page.expect_request(lambda r: r.method == "POST") as sent:
                row.locator("button").click()
            assert sent.value.post_data_json["session_items"] == clicked[::-1]  # newest first
            expect(page.locator("#session-items li")).to_have_count(n + 1)
            _settled(page, "#session-recs")
            answers.append(recs.get_attribute("data-answer"))
            assert answers[-1] != answers[-2], f"click {n + 1} left the answer as it was"
        newest = page.locator("#session-items li").first
        expect(newest).to_have_attribute("data-item-id", clicked[-1])
        expect(recs.locator(".badge-new").first).to_be_visible()
        expect(page.locator("#session-meta")).to_contain_text("new since the last click")
        visit.shot("session")

        # the model page: run, metrics, evaluation, validation with Data Docs, alias history
        visit.go("#/model")
        _settled(page, "main")
        model = api.request("GET", "/model")[1]
        expect(page.locator("#model-run")).to_contain_text(model["model_version"])
        expect(page.locator("#run-metrics tbody tr").first).to_be_visible()
        expect(page.locator("#run-metrics")).to_contain_text("two tower")
        expect(page.locator("#evaluation")).to_contain_text("served pipeline")
        expect(page.locator("#validation")).to_contain_text("interactions")
        docs = page.request.get(api.url + str(page.get_attribute("#data-docs-link", "href")))
        assert docs.status == 200 and "text/html" in docs.headers["content-type"]
        earlier = next(e for e in model["aliases"]["history"] if e["rollback_command"])
        expect(page.locator("#aliases .rollback-command").first).to_have_text(
            f"recsys rollback --to {earlier['collection']}"
        )
        visit.shot("model")

        # a narrow screen: one column, nothing wider than the screen
        page.set_viewport_size({"width": 390, "height": 844})
        narrow = ((f"#/user/{user}", "user-narrow", "#recs article.card"),
                  (f"#/item/{item_id}", "item-narrow", "#similar .row-item"),
                  ("#/session", "session-narrow", "#session-recs article.card"),
                  ("#/model", "model-narrow", "#run-metrics"))  # fmt: skip
        for route, name, ready in narrow:
            visit.go(route)
            expect(page.locator(ready).first).to_be_visible()
            _settled(page, "main")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{name}: {width} px wide on a 390 px screen"
            visit.shot(name)
    finally:
        try:
            visit.close()
        finally:
            api.stop()
    print("console screenshots:", *visit.shots, sep="\n  ")
    assert all(p.stat().st_size > 10_000 for p in visit.shots)


def test_the_console_sends_the_api_key(console_home: Path, browser: Any, tmp_path: Path) -> None:
    """With keys required for reads, the console says so, then works with the key entered."""
    from playwright.sync_api import expect

    keys = json.dumps({"console": {"sha256": hash_key(READ_KEY), "scopes": ["read"]}})
    api = LiveApi(console_home, RECSYS_SERVE__API_KEYS=keys,
                  RECSYS_SERVE__REQUIRE_KEY_FOR_READS="true").start()  # fmt: skip
    visit = Visit(browser, api, tmp_path)
    page = visit.page
    try:
        visit.go("#/model")
        alert = page.locator("main [role=alert]")
        expect(alert).to_contain_text("401")
        expect(alert).to_contain_text("API key")
        page.click("#keybox summary")
        page.fill("#api-key", READ_KEY)
        with page.expect_request(re.compile(r"/model$")) as sent:
            page.click("#key-form button[type=submit]")
        assert sent.value.headers.get("x-api-key") == READ_KEY
        expect(page.locator("#run-metrics tbody tr").first).to_be_visible()
        visit.shot("model-with-key")
    finally:
        try:
            visit.close()
        finally:
            api.stop()
