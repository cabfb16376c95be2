"""Open the Feast repo in ``feature_repo/`` against the configured data root.

The committed ``feature_store.yaml`` points at the default data root so that the plain ``feast``
CLI works from ``feature_repo/`` out of the box. When ``RECSYS_HOME`` moves the data root, this
module writes a resolved copy of that file under ``$RECSYS_HOME/feast/`` (absolute registry and
online-store paths) and opens the store from it; ``feast -f <that copy> ...`` does the same from
the shell.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import sys
import warnings
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

from recsys.core.settings import Settings, feast_repo_settings

log = logging.getLogger(__name__)

os.environ.setdefault("FEAST_USAGE", "False")

#: Feast's ``batch_engine`` type of ``RECSYS_FEAST__MATERIALIZE_ENGINE=ray``: named, not imported
#: (that module imports Feast, which this one leaves to the functions that need it).
RAY_MATERIALIZE_ENGINE = "recsys.core.feast_ray.RayShardedEngine"


def resolved_yaml(settings: Settings) -> Path:
    """Write (if changed) and return a ``feature_store.yaml`` with absolute data-root paths."""
    source = settings.feature_repo / "feature_store.yaml"
    config = yaml.safe_load(source.read_text())
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    registry = config.get("registry")
    registry_path = str(settings.feast_dir / "registry.db")
    if isinstance(registry, dict):
        registry["path"] = registry_path
    else:
        config["registry"] = registry_path
    online = config.get("online_store") or {}
    if settings.feast.online_store == "redis":
        online = {"type": "redis", "connection_string": redis_connection_string(settings)}
        if settings.feast.redis_key_ttl_seconds is not None:
            online["key_ttl_seconds"] = settings.feast.redis_key_ttl_seconds
    elif online.get("type", "sqlite") == "sqlite":
        online["path"] = str(settings.feast_dir / "online_store.db")
    config["online_store"] = online
    if settings.feast.materialize_engine == "ray":  # materialization as Ray tasks
        config["batch_engine"] = {
            "type": RAY_MATERIALIZE_ENGINE,
            "shard_rows": settings.features.materialize_chunk_rows,
            "memory_limit": settings.features.duckdb_memory_limit,
        }
    target = settings.feast_dir / "feature_store.yaml"
    text = (
        "# Generated from feature_repo/feature_store.yaml for this data root"
        f" (online store: {online_store_target(settings)}).\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    if not target.exists() or target.read_text() != text:
        # 0600 from the start: with a Redis password in it, the file is a credential. A temp
        # name per process: API replicas starting at once on a shared volume write it together.
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, target)
    return target


def redis_connection_string(settings: Settings) -> str:
    """Feast's Redis ``connection_string`` (``host:port,db=N,password=...,ssl=true``) from
    ``RECSYS_FEAST__REDIS_URL``, which may be a ``redis://`` / ``rediss://`` URL (the form
    every other Redis client takes) or already Feast's own form."""
    secret = settings.feast.redis_url
    if secret is None:
        raise ValueError(
            "RECSYS_FEAST__ONLINE_STORE=redis needs RECSYS_FEAST__REDIS_URL, e.g. "
            "redis://:password@127.0.0.1:6379/0"
        )
    url = secret.get_secret_value().strip()
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(
            f"RECSYS_FEAST__REDIS_URL: {parts.scheme}://{parts.hostname or ''}... is not a "
            "redis:// or rediss:// URL with a host; give redis://[:password@]host:port[/db] "
            "or Feast's host:port,password=... form"
        )
    if ":" in parts.hostname:
        raise ValueError(
            "RECSYS_FEAST__REDIS_URL: Feast's Redis store splits host:port on ':', so an IPv6 "
            "address cannot be given; use a host name that resolves to it"
        )
    fields = [f"{parts.hostname}:{parts.port or 6379}"]
    db = parts.path.lstrip("/")
    if db:
        if not db.isdigit():
            raise ValueError(f"RECSYS_FEAST__REDIS_URL: the database {db!r} is not a number")
        fields.append(f"db={db}")
    if parts.username:
        fields.append(f"username={unquote(parts.username)}")
    if parts.password:
        password = unquote(parts.password)
        if "," in password or "$" in password:
            # Feast splits the string on ',' and expands $VARS in feature_store.yaml
            raise ValueError(
                "RECSYS_FEAST__REDIS_URL: the Redis password holds ',' or '$', which Feast's "
                "connection string cannot carry; choose a password without them"
            )
        fields.append(f"password={password}")
    if parts.scheme == "rediss":
        fields.append("ssl=true")
    return ",".join(fields)


def online_store_target(settings: Settings) -> str:
    """Which online store a materialization loads, without credentials: ``sqlite:<path>`` or
    ``redis:<host:port>[/db]``. Feast's registry remembers how far each view was loaded but
    not into which store, so ``recsys materialize`` compares this to the last run's."""
    if settings.feast.online_store == "sqlite":
        return f"sqlite:{settings.feast_dir / 'online_store.db'}"
    fields = redis_connection_string(settings).split(",")
    db = next((f.split("=", 1)[1] for f in fields if f.startswith("db=")), "0")
    return f"redis:{fields[0]}/{db}"


def _close_ibis_backend() -> None:
    """Close the DuckDB connection that Feast's offline store opens through ibis's default
    backend; left open, DuckDB's bindings print a page of "leaked instance" lines at exit."""
    import ibis

    backend = ibis.options.default_backend
    if backend is not None:
        backend.disconnect()
        ibis.options.default_backend = None
        gc.collect()


def import_feast() -> None:
    """Import Feast with the process's warning filters put back afterwards: some of its modules
    call ``warnings.simplefilter("once", DeprecationWarning)`` when imported, which puts every
    library's deprecation warnings back on the console over the filters the CLI set."""
    if "feast" in sys.modules:
        return
    with warnings.catch_warnings():
        import feast  # noqa: F401 - imported for its side effects, undone on exit


def _quiet_ibis_backend() -> None:
    """Give ibis (Feast's DuckDB offline store) a default DuckDB connection that draws no
    progress bar: DuckDB draws one on the console for any query over two seconds, a
    point-in-time join on a loaded machine included, in the middle of the command's output."""
    import ibis

    if ibis.options.default_backend is None:
        backend = ibis.duckdb.connect()
        backend.raw_sql("SET enable_progress_bar = false")
        ibis.options.default_backend = backend


def open_store(settings: Settings):  # -> feast.FeatureStore (import is slow: keep it lazy)
    """A FeatureStore over ``feature_repo/`` with paths under the configured data root."""
    import_feast()
    from feast import FeatureStore

    _quiet_ibis_backend()
    atexit.register(_close_ibis_backend)  # registering twice is harmless: disconnect is idempotent
    return FeatureStore(repo_path=str(settings.feature_repo), fs_yaml_file=resolved_yaml(settings))


def _forget_other_roots_tables(settings: Settings) -> None:
    """Drop from the registry the online tables it records in another data root's SQLite file.

    Feast's registry records each online table with the file it lives in, and ``feast apply``
    tears down every recorded table that its new plan does not keep. A data root copied with
    its registry (a staging copy, a benchmark's copy) would then drop the *original* root's
    tables on its first apply. Forgetting them first leaves the other root alone; this root's
    tables are made again by the same apply (the next materialize loads them: the marker names
    another store).
    """
    registry_path = settings.feast_dir / "registry.db"
    if not registry_path.exists():
        return
    store = open_store(settings)
    infra = store.registry.get_infra(store.project)
    own = str(settings.feast_dir / "online_store.db")
    others = [o for o in infra.infra_objects if getattr(o, "path", own) != own]
    if others:
        from feast.infra.infra_object import Infra

        kept = Infra()
        kept.infra_objects = [o for o in infra.infra_objects if o not in others]
        store.registry.update_infra(kept, store.project, commit=True)
        log.info("the registry named %d online tables of another data root (%s): forgotten, "
                 "not dropped", len(others), others[0].path)  # fmt: skip


def apply(settings: Settings) -> None:
    """``feast apply`` in-process: register the definitions in ``feature_repo/``."""
    import_feast()
    from feast.repo_config import load_repo_config
    from feast.repo_operations import apply_total

    config = load_repo_config(settings.feature_repo, resolved_yaml(settings))
    _forget_other_roots_tables(settings)
    sys.modules.pop("definitions", None)  # re-import: the data root may differ from last time
    cwd = Path.cwd()
    sys.path.insert(0, str(settings.feature_repo))  # Feast imports definitions.py by name
    try:
        # definitions.py reads the same settings (data root, TTLs) through repo_settings()
        with contextlib.redirect_stdout(None), feast_repo_settings(settings):
            apply_total(config, settings.feature_repo, skip_source_validation=False)
    finally:
        os.chdir(cwd)
        sys.path.remove(str(settings.feature_repo))


def historical_features(store, entity_df, features):  # -> pandas.DataFrame
    """Feast's point-in-time join (``get_historical_features``) as a frame with a fresh index,
    without the ibis deprecation chatter of Feast's DuckDB offline store."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        frame = store.get_historical_features(entity_df=entity_df, features=features).to_df()
    return frame.reset_index(drop=True)
