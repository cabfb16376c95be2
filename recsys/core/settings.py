"""One typed place for every setting, overridable from the environment.

Every stage reads its knobs from :class:`Settings` so that a run can be reproduced from its
environment alone. Environment variables use the ``RECSYS_`` prefix and ``__`` for nesting,
e.g. ``RECSYS_HOME=/data/recsys`` or ``RECSYS_TRAIN__EPOCHS=5``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]


def _default_home() -> Path:
    """The git-ignored ``var/`` folder of the checkout, or of the working directory."""
    if (REPO_ROOT / "feature_repo").is_dir():
        return REPO_ROOT / "var"
    return Path.cwd() / "var"


class SynthSettings(BaseModel):
    """Size and shape of the generated fashion data set."""

    users: int = 5_000
    items: int = 2_000
    days: int = 90
    seed: int = 7
    end_date: str | None = Field(
        default=None, description="Last day of data (YYYY-MM-DD); default: today (UTC)."
    )


class ValidationSettings(BaseModel):
    """When bad rows stop the pipeline instead of being quarantined."""

    max_bad_fraction: float = Field(
        default=0.05, ge=0, le=1, description="Share of bad rows per table that fails a run."
    )
    memory_limit: str = Field(
        default="2GB", description="DuckDB runs the row rules within this and spills beyond it."
    )
    gx_chunk_rows: int = Field(
        default=2_000_000,
        ge=1,
        description="Great Expectations checks a table in parts of about this many rows, one "
        "part in pandas at a time, and merges the results into one per table.",
    )


class FeatureSettings(BaseModel):
    """Feature computation knobs."""

    recent_items: int = Field(default=10, description="Recent purchases fed to the user tower.")
    purchased_items_cap: int = Field(
        default=500, description="Purchased item ids kept online for the already-bought filter."
    )
    user_ttl_days: int = Field(
        default=365, description="How far back a user snapshot may serve (Feast TTL)."
    )
    item_ttl_days: int = Field(default=365, description="The same for item demand snapshots.")
    activity_ttl_days: int = Field(default=30, description="TTL of pushed real-time activity.")
    duckdb_memory_limit: str = Field(
        default="3GB", description="DuckDB spills to disk beyond this (features stage)."
    )
    materialize_chunk_rows: int = Field(
        default=1_000_000, description="Materialize in time windows of about this many rows."
    )
    engine: Literal["duckdb", "ray"] = Field(
        default="duckdb",
        description="duckdb: every feature query in one DuckDB process (one machine). ray: the "
        "same queries over entity shards (users and items split by hash) as Ray tasks, on the "
        "cluster at RAY_ADDRESS or a local Ray; same files, for data past one machine. The "
        "data root must then be one shared path on every node. `recsys features --engine`.",
    )
    ray_shards: int = Field(
        default=0,
        ge=0,
        description="Shards per entity with engine=ray; 0: the cluster's CPUs (one task each). "
        "More shards make smaller tasks (each one DuckDB with `duckdb_memory_limit`).",
    )


class FeastSettings(BaseModel):
    """Which Feast online store the feature repo is rendered with (``RECSYS_FEAST__*``).

    The committed ``feature_repo/feature_store.yaml`` keeps the embedded SQLite store, so the
    plain ``feast`` CLI works on a fresh clone; ``recsys`` writes the copy it opens under
    ``<home>/feast/`` with the store chosen here. The registry stays a file under the same
    folder either way (one writer: ``recsys materialize``; the API only reads it).
    """

    online_store: Literal["sqlite", "redis"] = Field(
        default="sqlite",
        description="sqlite: a file under <home>/feast (one machine). redis: Feast's Redis "
        "online store at `redis_url`, shared by every API replica and the materialize job.",
    )
    redis_url: SecretStr | None = Field(
        default=None,
        description="Where Redis listens: redis://[:password@]host:port[/db] (rediss:// for "
        "TLS), or Feast's own connection string (host:port,password=...,ssl=true). Secret: "
        "never logged; written only to the 0600 feature_store.yaml under <home>/feast.",
    )
    redis_key_ttl_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Expire an entity's Redis keys this long after their last write (none: "
        "keep). Bounds Redis memory by the active shoppers; an expired user is served as new.",
    )
    materialize_engine: Literal["local", "ray"] = Field(
        default="local",
        description="local: Feast's own engine, in the materializing process. ray: Ray tasks "
        "(on the cluster at RAY_ADDRESS, else a local Ray), each loading the newest row of one "
        "key shard of a view into the online store; rendered into feature_store.yaml as "
        "`batch_engine` (recsys.core.feast_ray). Meant for Redis: SQLite takes one writer.",
    )


class EventSettings(BaseModel):
    """What each event type says about what a shopper wants (``RECSYS_EVENTS__WEIGHTS``).

    The strongest type a data set has is its *signal*: the candidate sources fit on it, the
    ranker's labels are the next event of that kind, and evaluation scores it. A fashion shop
    with orders trains on purchases; a shop that sees only clicks trains on views, with the same
    code, instead of falling back to popularity.
    """

    weights: dict[str, float] = Field(
        default={"purchase": 1.0, "add_to_cart": 0.5, "view": 0.1},
        description="Strength of each event type; the highest one present is the signal.",
    )

    def signal(self, present: Iterable[str], where: str = "the interactions") -> str:
        """The strongest event type in ``present`` (``where`` names the data for the error)."""
        found = [t for t in dict.fromkeys(present) if t in self.weights]
        if not found:
            raise ValueError(
                f"{where} have none of the weighted event types {sorted(self.weights)}: "
                "import events of one of them, or give their type a weight in "
                "RECSYS_EVENTS__WEIGHTS"
            )
        return max(found, key=lambda t: self.weights[t])


class TrainSettings(BaseModel):
    """Two-tower training hyper-parameters and the evaluation protocol."""

    dim: int = 64
    epochs: int = 3
    batch_size: int = 1024
    train_events: tuple[str, ...] = Field(
        default=("purchase", "view"),
        description="Events used as positives; views add taste signal that purchases lack.",
    )
    lr: float = 0.01
    weight_decay: float = 0.0
    temperature: float = 0.1
    id_dropout: float = Field(
        default=0.5, description="Share of rows trained without their user/item id embedding."
    )
    user_id_embedding: bool = Field(
        default=True,
        description="Learn an embedding per user id; off, a user is their history and features.",
    )
    num_workers: int = 1
    cpus_per_worker: int = Field(
        default=0, description="Threads per worker; 0 = the machine's cores / num_workers."
    )
    test_days: int = Field(default=7, description="Last days held out for evaluation.")
    example_chunk_rows: int = Field(
        default=1_000_000,
        ge=1,
        description="Training examples read from Feast (point in time) and encoded this many "
        "at a time: memory holds one chunk's features plus the encoded arrays (~200 B a row).",
    )
    cold_item_fraction: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Experiment: share of test-period items kept out of training entirely, "
        "to measure recommendations of new items from content alone (0: off).",
    )
    text_embeddings: Literal["auto", "off"] = Field(
        default="auto",
        description="auto: feed the item text embeddings of `recsys embed` to both towers "
        "when they exist (items without one get zeros); off: train without them.",
    )
    seed: int = 0


class EmbedSettings(BaseModel):
    """Knobs of `recsys embed` (``RECSYS_EMBED__*``); its explicit options win over these."""

    text_model_path: Path | None = Field(
        default=None, description="Text model folder; default: the bundled all-MiniLM-L6-v2."
    )
    image_model_path: Path | None = Field(
        default=None, description="CLIP(-vision) folder with preprocessor_config.json."
    )
    num_cpus: int = Field(
        default=0, description="CPUs (torch threads) of the encoding actor; 0 = all local CPUs."
    )
    max_length: int = Field(default=128, description="Token limit of the text encoder.")
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Arithmetic of the encoders' forward pass. auto: bfloat16 where the CPU "
        "computes it natively (AVX512-BF16, AMX), else float32. On the demo catalogue bfloat16 "
        "encoded 2.9x faster with a cosine of 0.99998 to the float32 vectors; each precision "
        "has its own cache file.",
    )
    image_column: str = Field(
        default="image_path",
        description="Items column with image files (relative paths: from the items file).",
    )


class SourceSettings(BaseModel):
    """Settings every candidate source has; a source's own settings class adds its knobs."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Propose candidates and feed the ranker.")
    k: int = Field(default=100, ge=0, description="Candidates it proposes per request.")


class ItemItemSourceSettings(SourceSettings):
    """Item-item neighbours (EASE or cosine) summed over the visitor's history."""

    method: Literal["auto", "ease", "ease_local", "cosine"] = Field(
        default="auto",
        description="auto: EASE when its dense matrix fits ease_memory_gb, else ease_local "
        "(EASE over each item's ease_support strongest co-purchase partners).",
    )
    ease_lambda: float = 400.0
    ease_memory_gb: float = 8.0
    ease_support: int = Field(
        default=300, ge=1, description="ease_local: partners each item's weights are solved on."
    )
    neighbours: int = Field(default=200, description="Neighbours kept per item for serving.")


class TwoTowerSourceSettings(SourceSettings):
    """Nearest item vectors to the two-tower user vector (the vector store when serving)."""


class AlsSourceSettings(SourceSettings):
    """implicit's ALS over all purchases; the visitor's factors folded in from the history.

    The defaults are the middle of ``recsys evaluate``'s ALS grid (its 64 factors are the
    cheapest): the ranker weighs the score, so it need not be tuned per shop."""

    k: int = 50
    factors: int = Field(default=64, ge=1)
    regularization: float = Field(default=0.5, gt=0)
    alpha: float = Field(default=20.0, gt=0, description="Confidence of a purchase.")
    iterations: int = Field(default=15, ge=1)


class BoughtTogetherSourceSettings(SourceSettings):
    """Association rules of the visitor's most recent items."""

    k: int = 30
    seeds: int = Field(default=5, description="Most recent items whose rules are used.")
    min_pair_baskets: int = 2
    per_item: int = Field(default=20, description="Rules kept per antecedent item.")


class PopularSourceSettings(SourceSettings):
    """Popularity in the visitor's age bucket (or overall) over a recent window."""

    k: int = 50
    window: Literal["7d", "30d", "all"] = "7d"


class SessionSourceSettings(SourceSettings):
    """A session model (``models/session/``) proposing what comes next in this visit.

    ``params``: its hyper-parameters over the model's defaults (names as in its ``defaults``),
    e.g. ``RECSYS_SOURCES__SR__PARAMS='{"steps": 10}'``.
    """

    params: dict[str, Any] = Field(default_factory=dict)


class SourcesSettings(BaseModel):
    """Candidate sources by name, in the order they run (``models/sources/``).

    A plug-in source registered under another name is configured the same way, e.g.
    ``RECSYS_SOURCES__MY_SOURCE__K=50``: its own settings class validates the entry.
    """

    model_config = ConfigDict(extra="allow")

    item_item: ItemItemSourceSettings = ItemItemSourceSettings()
    two_tower: TwoTowerSourceSettings = TwoTowerSourceSettings()
    als: AlsSourceSettings = AlsSourceSettings()
    bought_together: BoughtTogetherSourceSettings = BoughtTogetherSourceSettings()
    popular: PopularSourceSettings = PopularSourceSettings()
    # the session task's own sources (``SessionSettings``): what comes next in this visit
    sr: SessionSourceSettings = SessionSourceSettings()
    vsknn: SessionSourceSettings = SessionSourceSettings()
    slist: SessionSourceSettings = SessionSourceSettings()
    cooccurrence: SessionSourceSettings = SessionSourceSettings()
    gru4rec: SessionSourceSettings = SessionSourceSettings(enabled=False)
    item2vec: SessionSourceSettings = SessionSourceSettings(enabled=False)

    def raw(self, name: str) -> dict[str, Any] | None:
        """The entry for source ``name`` as a plain dict, None when it is not configured."""
        value = getattr(self, name, None)
        if value is None:
            value = (self.model_extra or {}).get(name)
        if isinstance(value, BaseModel):
            return value.model_dump()
        return dict(value) if value is not None else None

    def names(self) -> list[str]:
        return [*type(self).model_fields, *(self.model_extra or {})]


class RankingSettings(BaseModel):
    """The served pipeline around the sources: the LightGBM ranker and business rules."""

    enabled: bool = Field(default=True, description="Fit sources + ranker in `recsys train`.")
    history_seeds: int = Field(
        default=50, description="Most recent history items the behavioural sources start from."
    )
    recent_days: int = Field(
        default=7, description="Window of the ranker's recent-demand features (item momentum)."
    )
    label_users: int = Field(
        default=50_000,
        description="Users whose held-out purchase labels the ranker's rows (ASOS: 29.5k "
        "users have two or more purchases; all of them gave the ranker 18% more Recall@10 "
        "over item-item alone, 16.5k gave 7%).",
    )
    label_share: float = Field(
        default=0.2,
        gt=0,
        lt=1,
        description="At most this share of the training purchases is held out as labels "
        "(the two-tower trains without them).",
    )
    objective: Literal["binary", "lambdarank", "rank_xendcg"] = Field(
        default="binary", description="LightGBM objective of the ranker (see models/ranker.py)."
    )
    compiled: bool = Field(
        default=True,
        description="Serve the ranker's trees compiled to machine code (lleaves): the same "
        "scores, the ranker stage 3-4x faster at H&M size; compiled once per model and CPU "
        "into <home>/cache/ranker.",
    )
    rounds: int = Field(
        default=100, description="Boosting rounds (no early stopping; each costs predict time)."
    )
    max_category_share: float = Field(
        default=0.5, description="Diversity: at most this share of a response in one category."
    )


class SessionSettings(BaseModel):
    """The session pipeline: session sources + its own ranker, for ``POST /recommendations``
    and ``similar?method=sessions`` (``recsys train`` fits it when the data has sessions)."""

    enabled: bool = Field(default=True, description="Fit the session pipeline in `recsys train`.")
    label_share: float = Field(
        default=0.15,
        gt=0,
        lt=1,
        description="The newest share of training sessions whose prefixes give the session "
        "ranker its rows (its sources are fitted on the sessions before them).",
    )
    label_sessions: int = Field(
        default=5_000, ge=10, description="At most this many label sessions (the newest)."
    )
    max_prefix: int = Field(
        default=20, ge=1, description="Newest session items the session sources start from."
    )
    negative_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Share of the session ranker's non-label rows it trains on (every label "
        "row is kept): the same validation NDCG@10 at half of LightGBM's time on the demo "
        "shop (pipelines.ranking.sample_negatives); 1 keeps every row.",
    )
    visit_gap_minutes: float = Field(
        default=30.0,
        gt=0,
        description="A known user's visit ends after this long without an event: their views "
        "steer recommendations while it lasts, and a later event starts a new one.",
    )


class EvaluationSettings(BaseModel):
    """The fixed evaluation protocol shared by `recsys train`'s table and `recsys evaluate`."""

    recent_popularity_days: int = Field(
        default=14, description="Window of the recent-popularity baseline."
    )


class VectorStoreSettings(BaseModel):
    """Which vector store backend to use (``type``), Feast-style, and how collections are
    indexed.

    The index settings (payload indexes, HNSW, quantization) apply to the collections that
    `recsys index` builds from then on, on either backend (``recsys.core.vectorstore``): a
    collection keeps what it was built with, so a change takes effect at the next index.
    """

    type: Literal["edge", "qdrant"] = "edge"
    url: str | None = Field(default=None, description="Qdrant server URL for type=qdrant.")
    api_key: str | None = None
    path: Path | None = Field(
        default=None,
        description="type=qdrant without url: qdrant-client's embedded local mode on this "
        "folder (relative to RECSYS_HOME). It persists, but scans exactly in Python and "
        "allows one process at a time: for tests and trying the qdrant backend without a "
        "server, not for serving traffic.",
    )
    collection: str = Field(
        default="items",
        description="Alias that serving reads; `recsys index` points it at a new collection.",
    )
    payload_indexes: dict[str, Literal["keyword", "integer", "float", "bool"]] = Field(
        default_factory=lambda: {
            "category": "keyword",
            "department": "keyword",
            "in_stock": "bool",
            "price": "float",
        },
        description="Payload fields indexed in every new collection, with their kind (keyword "
        "for categories, integer/float for numbers filtered by range, bool for flags), added "
        "to those `recsys index` names itself. The default holds the fields the API filters "
        "on (category, department, in_stock, max_price): without an index a server checks "
        "each candidate's payload, and filtered HNSW cannot build its extra links. A value "
        "(JSON, or RECSYS_VECTOR_STORE__PAYLOAD_INDEXES__<FIELD>=keyword) replaces the "
        "default; `recsys index` indexes the API's fields in any case.",
    )
    hnsw_m: int = Field(
        default=16,
        ge=4,
        le=128,
        description="HNSW edges per node: better recall for more memory and build time.",
    )
    hnsw_ef_construct: int = Field(
        default=100,
        ge=4,
        description="HNSW candidate list while building the graph: a better graph, slower "
        "to build.",
    )
    hnsw_ef: int = Field(
        default=64,
        ge=1,
        description="HNSW candidate list at search time (at least k): more exact, slower.",
    )
    quantization: Literal["none", "int8"] = Field(
        default="none",
        description="int8: keep a scalar-quantized copy of the vectors (4x smaller) that "
        "searches scan first, on both backends (qdrant-client's local mode records it but "
        "scans exactly). Off by default: a catalogue of a few hundred thousand items fits "
        "in RAM as floats.",
    )
    quantization_quantile: float | None = Field(
        default=0.99,
        ge=0.5,
        le=1.0,
        description="Share of the values that sets the int8 range; outliers are clipped.",
    )
    quantization_always_ram: bool = Field(
        default=True, description="Keep the quantized vectors in RAM (not memory-mapped)."
    )
    quantization_rescore: bool = Field(
        default=True,
        description="Re-score quantized candidates with the float vectors, so scores stay the "
        "exact cosine similarity.",
    )
    quantization_oversampling: float | None = Field(
        default=2.0,
        ge=1.0,
        description="Fetch this many times k quantized candidates before rescoring.",
    )
    keep_collections: int = Field(
        default=3,
        ge=1,
        description="Collections kept per alias (the live one included) for `recsys rollback`.",
    )


class RaySettings(BaseModel):
    """Local Ray runtime limits (ignored when RAY_ADDRESS points at a cluster), and the OpenMP
    wait policy of Ray Train workers (applied on a cluster too)."""

    use: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="When jobs (embedding, training) go through Ray. auto: when RAY_ADDRESS "
        "names a cluster or more than one training worker is asked for; otherwise the same "
        "code runs in this process, because one local worker gains nothing from Ray and pays "
        "its start-up (a Ray Train fit of the demo shop took 43 s against 20 s in-process). "
        "always / never: force one way (`--ray/--no-ray` on a command wins over this).",
    )
    num_cpus: int | None = None
    object_store_memory: int = 512 * 1024 * 1024
    # Short on purpose: Ray's Unix socket paths must stay under ~107 characters.
    temp_dir: Path = Path("/tmp/recsys-ray")
    worker_omp_wait_policy: Literal["PASSIVE", "ACTIVE"] = Field(
        default="PASSIVE",
        description="OMP_WAIT_POLICY of Ray Train workers: PASSIVE (sleep while waiting) "
        "because spinning OpenMP threads starve Ray's own threads (see "
        "recsys.core.ray_runtime.worker_env).",
    )


class ApiKey(BaseModel):
    """One client's key, as the API stores it: never the key itself.

    ``recsys api-key NAME`` makes a key and prints this entry. Keys are 256-bit random tokens,
    so a plain SHA-256 is enough to keep a leaked settings file from giving the key away (a slow
    password hash guards guessable secrets, which these are not).
    """

    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the key.")
    scopes: frozenset[Literal["read", "write", "admin"]] = Field(
        default=frozenset({"read", "write"}),
        description="read: recommendation routes (when keys are required for reads); write: "
        "POST /events; admin: /metrics.",
    )


class ServeSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    default_k: int = 10
    max_k: int = 100
    features_timeout_ms: float = Field(
        default=50.0,
        description="Budget of the online feature read (<= 0: none); past it "
        "the answer is degraded to what is known without the user's features.",
    )
    alias_poll_s: float = Field(
        default=1.0,
        description="How often the API checks whether `recsys index` or "
        "`recsys rollback` moved the collection alias (<= 0: never).",
    )
    workers: int = Field(default=1, ge=1, description="uvicorn worker processes.")
    search_timeout_ms: float = Field(
        default=50.0,
        description="Budget of the vector search (<= 0: none); past it the other "
        "candidate sources answer, degraded.",
    )
    api_keys: dict[str, ApiKey] = Field(
        default_factory=dict,
        description="Client name -> hashed key (`recsys api-key NAME` prints an entry). With "
        "none, every route is open: `recsys serve` then refuses a non-loopback host.",
    )
    require_key_for_reads: bool = Field(
        default=False, description="Also ask a key with the read scope on recommendation routes."
    )
    allow_open_writes: bool = Field(
        default=False,
        description="Serve on a non-loopback host without API keys (anyone reaching the port "
        "may post events): for a private network that is guarded otherwise.",
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Larger request bodies are refused (413)."
    )
    write_rate_per_s: float = Field(
        default=50.0,
        ge=0,
        description="Write requests (event batches) per second per client (key, else address); "
        "bursts of twice that; 0: unlimited. Per worker process.",
    )
    read_rate_per_s: float = Field(
        default=0.0, ge=0, description="The same for read requests; 0 (default): unlimited."
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed to call the API (e.g. https://shop.example); "
        "none by default.",
    )
    event_log_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=4096,
        description="events.jsonl is rotated (renamed with its first write time) past this size.",
    )


class Settings(BaseSettings):
    """Root settings; ``home`` is the data root that every stage reads and writes under."""

    model_config = SettingsConfigDict(
        env_prefix="RECSYS_", env_nested_delimiter="__", extra="ignore"
    )

    home: Path = Field(default_factory=_default_home)
    feature_repo: Path = REPO_ROOT / "feature_repo"
    synth: SynthSettings = SynthSettings()
    validation: ValidationSettings = ValidationSettings()
    features: FeatureSettings = FeatureSettings()
    feast: FeastSettings = FeastSettings()
    embed: EmbedSettings = EmbedSettings()
    events: EventSettings = EventSettings()
    train: TrainSettings = TrainSettings()
    sources: SourcesSettings = SourcesSettings()
    ranking: RankingSettings = RankingSettings()
    sessions: SessionSettings = SessionSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    vector_store: VectorStoreSettings = VectorStoreSettings()
    ray: RaySettings = RaySettings()
    serve: ServeSettings = ServeSettings()

    # Paths derived from the data root: one place that says where each stage writes.
    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def validated_dir(self) -> Path:
        return self.data_dir / "validated"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def features_dir(self) -> Path:
        return self.data_dir / "features"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def feast_dir(self) -> Path:
        return self.home / "feast"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    def item_embeddings_path(self, kind: Literal["text", "image"] = "text") -> Path:
        """Item content vectors of ``recsys embed`` (written there, read by ``recsys train``).

        Beside the features: a new data set clears them together, so a model never trains on
        the vectors of another catalogue.
        """
        return self.features_dir / f"item_{kind}_embeddings.parquet"

    @property
    def scratch_dir(self) -> Path:
        """Temporary files a driver hands to its Ray workers (created on first use). Under the
        data root because on a cluster that is the one path every node mounts (README: "How
        data reaches the workers"); /tmp is each node's own."""
        path = self.home / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def ranker_cache_dir(self) -> Path:
        """Compiled rankers by model hash and CPU: compiled by the first process that serves a
        model on a kind of machine, loaded in milliseconds by the others."""
        return self.home / "cache" / "ranker"

    @property
    def embeddings_cache_dir(self) -> Path:
        """Vectors by content hash: kept across data sets, so re-embedding costs only edits."""
        return self.home / "cache" / "embeddings"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once from the environment."""
    return Settings()


_FEAST_REPO_SETTINGS: Settings | None = None


@contextmanager
def feast_repo_settings(settings: Settings) -> Iterator[None]:
    """Hand ``settings`` to ``feature_repo/definitions.py`` while Feast imports it in this
    process (``recsys materialize``'s ``feast apply``): Feast imports that file by name, so it
    cannot be given arguments; it calls :func:`repo_settings` instead."""
    global _FEAST_REPO_SETTINGS
    previous, _FEAST_REPO_SETTINGS = _FEAST_REPO_SETTINGS, settings
    try:
        yield
    finally:
        _FEAST_REPO_SETTINGS = previous


def repo_settings() -> Settings:
    """The settings ``feature_repo/definitions.py`` builds its views from: the ones an
    in-process ``apply`` handed over, else a fresh read of the environment (the plain `feast`
    CLI run from ``feature_repo/``, with ``RECSYS_HOME`` and friends)."""
    return _FEAST_REPO_SETTINGS if _FEAST_REPO_SETTINGS is not None else Settings()
