"""Content embeddings of the catalogue (text or images), computed with Ray Data and cached.

Embedding is the expensive part of content features: a transformer forward pass per item. Most
of a catalogue does not change between runs, so each item gets a **content hash**:

    sha256(model hash + kind + exact input)    model hash = sha256 of the folder's config.json

where the input is :func:`models.text_encoder.item_text` for ``kind="text"`` and the image
file's bytes for ``kind="image"``. Vectors are cached by that hash in
``cache_dir/{kind}_{model_hash[:12]}.parquet`` (``content_hash``, ``vector``), so a rerun only
encodes new or edited items; a different model gets a different cache file.

The misses go through Ray Data (``map_batches`` with a callable class, one actor that loads the
model once) so the same code scales from this laptop to a cluster (``RAY_ADDRESS``), or run the
very same callable class in this process: no Ray start-up, the quicker choice on one machine
(``use_ray``; by default :func:`recsys.core.ray_runtime.ray_wanted`: Ray on a cluster).

Output: ``out_path`` Parquet with ``item_id``, ``vector`` (list<float32>, unit length) and
``content_hash``, in the order of the items table.

Caveat: the model identity is config.json only. Two checkpoints with the same config (e.g. a
fine-tune of the same architecture) share a cache file: point ``cache_dir`` elsewhere, or delete
the cache, when swapping weights in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from models.text_encoder import check_model_dir, default_model_path, item_text
from recsys.core.ray_runtime import ensure_ray, local_cpus, ray_wanted
from recsys.core.settings import Settings, get_settings
from recsys.core.terminal import progress_bar
from recsys.core.values import is_missing

log = logging.getLogger(__name__)

Kind = Literal["text", "image"]
KINDS: tuple[str, ...] = ("text", "image")


@dataclass
class EmbedSummary:
    """What a run did; ``hits``/``misses`` count items, ``encoded`` distinct inputs."""

    kind: str
    items: int
    hits: int
    misses: int
    encoded: int
    dim: int
    seconds: float
    items_per_s: float
    encode_seconds: float
    backend: str
    precision: str
    model_hash: str
    out_path: str
    cache_path: str


def model_hash(model_path: str | Path, precision: str = "float32") -> str:
    """sha256 of the model folder's config.json (and of the precision when it is not float32,
    so that float32 caches keep their names): the model's identity in cache keys."""
    path = check_model_dir(model_path)
    identity = (path / "config.json").read_bytes()
    if precision != "float32":
        identity += f"\0{precision}".encode()
    return hashlib.sha256(identity).hexdigest()


def resolve_precision(precision: str) -> str:
    """``auto``: bfloat16 where the CPU computes it natively, else float32 (emulated bfloat16
    would be slower than float32, not faster)."""
    if precision != "auto":
        return precision
    import torch

    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return "bfloat16" if native else "float32"


def content_hash(model_digest: str, kind: str, payload: bytes) -> str:
    """Cache key of one input: changes when the model, the kind or the input changes."""
    return hashlib.sha256(f"{model_digest}\0{kind}\0".encode() + payload).hexdigest()


class BatchEncoder:
    """Ray Data callable class: loads the encoder once per actor, embeds a batch of inputs:
    ``{"content_hash", "payload"}`` (payload = text, or image path) in, ``{"content_hash",
    "vector"}`` out. ``use_ray=False`` calls it in-process: both paths run identical code."""

    def __init__(
        self,
        kind: str,
        model_path: str,
        batch_size: int = 64,
        max_length: int = 128,
        num_threads: int = 0,
        precision: str = "float32",
    ) -> None:
        if precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be float32 or bfloat16, got {precision!r}")
        self.bfloat16 = precision == "bfloat16"
        if num_threads > 0:
            import torch

            # An actor owns num_cpus CPUs; more threads than that only oversubscribes them.
            torch.set_num_threads(num_threads)
        if kind == "text":
            from models.text_encoder import TextEncoder

            self.encoder: Any = TextEncoder(model_path, max_length, batch_size)
        elif kind == "image":
            from models.image_encoder import ImageEncoder

            self.encoder = ImageEncoder(model_path, batch_size=batch_size)
        else:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        # bfloat16 matrix products under autocast; the encoders return float32 unit vectors
        arithmetic = (torch.autocast("cpu", dtype=torch.bfloat16) if self.bfloat16
                      else contextlib.nullcontext())  # fmt: skip
        with arithmetic:
            vectors = self.encoder.encode([str(x) for x in batch["payload"]])
        return {"content_hash": np.asarray(batch["content_hash"]), "vector": vectors}


# --- reading inputs -----------------------------------------------------------------------
def _load_inputs(items_path: Path, kind: str, model_digest: str, image_column: str) -> pd.DataFrame:
    """``item_id``, ``payload`` (text or absolute image path) and ``content_hash`` per item."""
    if not items_path.is_file():
        raise FileNotFoundError(
            f"items table {items_path} does not exist: run `recsys data synth` or an adapter "
            "to write the canonical items Parquet first."
        )
    items = pq.read_table(items_path).to_pandas()
    if "item_id" not in items.columns:
        raise ValueError(f"{items_path} has no item_id column (required by the items schema).")
    dupes = items["item_id"][items["item_id"].duplicated()]
    if len(dupes):
        raise ValueError(
            f"{items_path}: item_id must be unique; {len(dupes)} duplicates, e.g. "
            f"{dupes.iloc[0]!r}. Deduplicate the items table (validate does) before embedding."
        )
    ids = items["item_id"].astype(str)
    if kind == "text":
        payload = [item_text(row) for row in items.to_dict("records")]
        hashes = [content_hash(model_digest, kind, t.encode("utf-8")) for t in payload]
    else:
        if image_column not in items.columns:
            raise ValueError(
                f"{items_path} has no {image_column!r} column: image embeddings need one image "
                "file per item (absolute, or relative to the items file); set "
                "RECSYS_EMBED__IMAGE_COLUMN if it is named differently."
            )
        payload, hashes = [], []
        for item_id, raw in zip(ids, items[image_column], strict=True):
            if is_missing(raw) or str(raw) == "":
                raise ValueError(
                    f"{items_path}: item {item_id!r} has no {image_column}; fill it or drop "
                    "the item before embedding images."
                )
            path = items_path.parent / Path(str(raw)).expanduser()  # unless absolute
            if not path.is_file():
                raise FileNotFoundError(
                    f"{items_path}: image {path} of item {item_id!r} ({image_column}) does "
                    "not exist."
                )
            payload.append(str(path.resolve()))
            hashes.append(content_hash(model_digest, kind, path.read_bytes()))
    return pd.DataFrame({"item_id": ids, "payload": payload, "content_hash": hashes})


# --- Parquet helpers ----------------------------------------------------------------------
def _vector_array(vectors: np.ndarray) -> pa.ListArray:
    n, dim = vectors.shape
    offsets = pa.array(np.arange(0, n * dim + 1, dim, dtype=np.int32) if n else [0], pa.int32())
    values = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), pa.float32())
    return pa.ListArray.from_arrays(offsets, values)


def read_vectors(table: pa.Table, source: Path | str = "table") -> np.ndarray:
    """The ``vector`` column of ``table`` as an ``(n, dim)`` float32 matrix."""
    col = table.column("vector").combine_chunks()
    if len(col) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if col.null_count or lengths.min() != lengths.max():
        raise ValueError(f"{source}: vectors are null or of different lengths; delete the file.")
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return values.reshape(len(col), int(lengths[0]))


def _write_atomic(table: pa.Table, path: Path) -> None:
    """Write next to ``path`` then rename, so a crash never leaves a half-written cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        return np.array([], dtype=object), np.zeros((0, 0), dtype=np.float32)
    table = pq.read_table(path, columns=["content_hash", "vector"])
    hashes = np.asarray(table.column("content_hash").to_pylist(), dtype=object)
    return hashes, read_vectors(table, path)


# --- encoding back ends -------------------------------------------------------------------
def _encode_in_process(
    todo: pd.DataFrame, ctor: dict[str, Any], batch_size: int, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    encoder = BatchEncoder(**ctor)
    hashes, vectors = [], []
    with progress_bar(f"embed {ctor['kind']}", len(todo), "items", progress) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo.iloc[start : start + batch_size]
            out = encoder({c: chunk[c].to_numpy() for c in ("content_hash", "payload")})
            hashes.append(out["content_hash"])
            vectors.append(out["vector"])
            bar.advance(len(chunk))
    return np.concatenate(hashes), np.concatenate(vectors).astype(np.float32, copy=False)


def _encode_ray(
    todo: pd.DataFrame,
    ctor: dict[str, Any],
    batch_size: int,
    num_cpus: int,
    settings: Settings,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    import ray.data

    ensure_ray(settings)
    # Ray Data's own bars (or, piped, its progress log lines) stay off: the batches are
    # counted below, into the one bar every stage shows.
    ray.data.DataContext.get_current().enable_progress_bars = False
    # Several blocks rather than one, so progress moves and results stream back as they finish.
    frame = todo[["content_hash", "payload"]].reset_index(drop=True)
    rows_per_block = batch_size * 8
    blocks = [frame.iloc[i : i + rows_per_block] for i in range(0, len(frame), rows_per_block)]
    ds = ray.data.from_pandas(blocks)
    with warnings.catch_warnings():
        # Ray 2.60 (pinned) names max_restarts among the "ray_remote_args" it deprecates for
        # 2.64, with no named replacement yet: revisit on upgrading Ray.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ds.map_batches(
            BatchEncoder,
            fn_constructor_kwargs=ctor,
            batch_size=batch_size,
            batch_format="numpy",
            # One actor: the model loads once and owns the CPUs (``concurrency=1`` before 2.51).
            compute=ray.data.ActorPoolStrategy(size=1),
            num_cpus=num_cpus,
            udf_modifying_row_count=False,
            # No restarts: with restarts allowed and constructor arguments in the object store
            # (where Ray Data puts them), Ray prints a C++ error line on the console, that a
            # restart could lose them, which reads like a failure when nothing failed. A
            # failed encode is run again; the cache keeps what was done.
            max_restarts=0,
        )
    hashes, vectors = [], []
    with progress_bar(f"embed {ctor['kind']}", len(todo), "items", progress) as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            hashes.append(np.asarray(batch["content_hash"], dtype=object))
            vectors.append(np.asarray(batch["vector"], dtype=np.float32))
            bar.advance(len(hashes[-1]))
    return np.concatenate(hashes), np.concatenate(vectors)


# --- the stage ----------------------------------------------------------------------------
def embed_items(
    items_path: Path,
    out_path: Path,
    cache_dir: Path,
    kind: Kind = "text",
    model_path: str | Path | None = None,
    use_ray: bool | None = None,
    batch_size: int = 64,
    settings: Settings | None = None,
    progress: bool = True,
) -> EmbedSummary:
    """Embed every item of ``items_path`` into ``out_path``, encoding only cache misses;
    ``model_path`` defaults to ``RECSYS_EMBED__TEXT_MODEL_PATH`` / ``..._IMAGE_MODEL_PATH``,
    and for text to the bundled all-MiniLM-L6-v2; ``settings`` to the process settings;
    ``use_ray`` (None: :func:`ray_wanted`) encodes through Ray Data or in this process."""
    t0 = time.perf_counter()
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    settings = settings or get_settings()
    use_ray = ray_wanted(settings, use_ray)
    opts = settings.embed
    items_path, out_path, cache_dir = Path(items_path), Path(out_path), Path(cache_dir)
    if model_path is None:
        model_path = opts.text_model_path if kind == "text" else opts.image_model_path
    if model_path is None:
        if kind == "image":
            raise ValueError(
                "kind='image' needs model_path (a CLIP or CLIP-vision folder with "
                "preprocessor_config.json) or RECSYS_EMBED__IMAGE_MODEL_PATH; no image "
                "weights ship with the platform."
            )
        model_path = default_model_path()
    model_dir = check_model_dir(model_path, f"{kind} model")
    precision = resolve_precision(opts.precision)
    digest = model_hash(model_dir, precision)
    cache_path = cache_dir / f"{kind}_{digest[:12]}.parquet"

    inputs = _load_inputs(items_path, kind, digest, opts.image_column)
    cached_hashes, cached_vectors = _read_cache(cache_path)
    index = {h: i for i, h in enumerate(cached_hashes)}
    hit = inputs["content_hash"].map(index.__contains__).to_numpy(dtype=bool)
    todo = inputs.loc[~hit].drop_duplicates("content_hash")
    log.info(
        "%s embeddings of %d items from %s: %d cached, %d to encode (%d distinct) with %s",
        kind,
        len(inputs),
        items_path,
        int(hit.sum()),
        int((~hit).sum()),
        len(todo),
        model_dir,
    )

    backend = "cache"
    t_enc = time.perf_counter()
    new_hashes = np.array([], dtype=object)
    new_vectors = np.zeros((0, 0), dtype=np.float32)
    if len(todo):
        num_cpus = opts.num_cpus or local_cpus(settings)
        ctor = {
            "kind": kind,
            "model_path": str(model_dir),
            "batch_size": batch_size,
            "max_length": opts.max_length,
            # Inside a Ray actor, match torch's threads to the CPUs the actor holds.
            "num_threads": num_cpus if use_ray else 0,
            "precision": precision,
        }
        backend = "ray" if use_ray else "in-process"
        new_hashes, new_vectors = (
            _encode_ray(todo, ctor, batch_size, num_cpus, settings, progress)
            if use_ray
            else _encode_in_process(todo, ctor, batch_size, progress)
        )
        if len(new_hashes) != len(todo) or set(new_hashes) != set(todo["content_hash"]):
            raise RuntimeError(
                f"the {backend} encoder returned {len(new_hashes)} vectors for {len(todo)} "
                "inputs; this is a bug in the batch function."
            )
    encode_seconds = time.perf_counter() - t_enc

    parts = [v for v in (cached_vectors, new_vectors) if len(v)]
    if len({v.shape[1] for v in parts}) > 1:
        raise ValueError(
            f"cache {cache_path} holds {cached_vectors.shape[1]}-d vectors but the model gives "
            f"{new_vectors.shape[1]}-d ones; delete the cache file."
        )
    all_vectors = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
    all_hashes = np.concatenate([cached_hashes, new_hashes])
    index.update({h: len(cached_hashes) + i for i, h in enumerate(new_hashes)})
    rows = np.fromiter((index[h] for h in inputs["content_hash"]), np.int64, len(inputs))
    vectors, dim = all_vectors[rows], all_vectors.shape[1]

    meta = {"kind": kind, "model_path": str(model_dir), "model_hash": digest, "dim": str(dim),
            "precision": precision}  # fmt: skip
    columns = {
        "item_id": pa.array(inputs["item_id"].tolist(), pa.string()),
        "vector": _vector_array(vectors),
        "content_hash": pa.array(inputs["content_hash"].tolist(), pa.string()),
    }
    metadata = {f"recsys.embed.{k}": v for k, v in meta.items()}
    _write_atomic(pa.table(columns).replace_schema_metadata(metadata), out_path)
    if len(new_hashes):
        hashes = pa.array(all_hashes.tolist(), pa.string())
        cache = pa.table({"content_hash": hashes, "vector": _vector_array(all_vectors)})
        _write_atomic(cache, cache_path)

    seconds = time.perf_counter() - t0
    summary = EmbedSummary(
        kind=kind,
        items=len(inputs),
        hits=int(hit.sum()),
        misses=int((~hit).sum()),
        encoded=len(todo),
        dim=dim,
        seconds=round(seconds, 3),
        items_per_s=round(len(inputs) / seconds, 1) if seconds > 0 else 0.0,
        encode_seconds=round(encode_seconds, 3),
        backend=backend,
        precision=precision,
        model_hash=digest,
        out_path=str(out_path),
        cache_path=str(cache_path),
    )
    log.info(
        "embedded %d items (%d hits, %d misses, dim %d) in %.1fs, %.0f items/s [%s] -> %s",
        summary.items,
        summary.hits,
        summary.misses,
        summary.dim,
        summary.seconds,
        summary.items_per_s,
        backend,
        out_path,
    )
    return summary
