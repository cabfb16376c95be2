"""A model run on disk: the one owner of every file in a run folder.

A run folder (``artifacts/<run id>``) holds what ``recsys train`` fitted: the two-tower weights
and encoders, the item vectors (computed once per run and read by both ``recsys index`` and the
ranker's two-tower feature), each candidate source's tables, the ranker and ``manifest.json``
(config, data snapshot, metrics). Models name their parts; this class decides where and in
which format they live, so nothing else builds a path inside a run. Everything is safetensors,
Parquet, JSON or text: a serving process loads a run without unpickling anything.

``artifacts/current`` names the run that ``recsys index`` and the API use.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "manifest.json"
CURRENT = "current"
ITEM_VECTORS = "item_vectors"
#: The file format of each kind of part: the one place that knows a part's file name.
SUFFIXES = {"json": ".json", "text": ".txt", "table": ".parquet", "tensors": ".safetensors"}
PartKind = Literal["json", "text", "table", "tensors"]


@dataclass(frozen=True)
class Run:
    """One run folder. Parts are named without extension (``run.write_table("x", frame)``
    writes ``x.parquet``); the format of each kind of part is decided here."""

    path: Path

    # ------------------------------------------------------------------ finding runs
    @classmethod
    def create(cls, artifacts_dir: Path, prefix: str = "") -> Run:
        """A new, empty run folder named by the time (so the newest sorts last)."""
        run_id = prefix + datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        path = artifacts_dir / run_id
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @classmethod
    def current(cls, artifacts_dir: Path) -> Run:
        """The run ``artifacts/current`` names."""
        marker = artifacts_dir / CURRENT
        if not marker.exists():
            raise FileNotFoundError(f"no trained model under {artifacts_dir}: run `recsys train`.")
        return cls(artifacts_dir / marker.read_text().strip())

    @classmethod
    def newest_first(cls, artifacts_dir: Path, prefix: str) -> Iterator[Run]:
        """Runs whose id starts with ``prefix`` (e.g. ``item2vec_``), newest first."""
        for path in sorted(artifacts_dir.glob(f"{prefix}*"), reverse=True):
            if path.is_dir():
                yield cls(path)

    def set_current(self) -> None:
        """Point ``current`` at this run atomically (a text file, portable across filesystems)."""
        artifacts_dir = self.path.parent
        tmp = artifacts_dir / f".{CURRENT}.tmp"
        tmp.write_text(self.id)
        tmp.replace(artifacts_dir / CURRENT)

    @property
    def id(self) -> str:
        return self.path.name

    def sub(self, name: str, create: bool = False) -> Run:
        """A folder of parts inside this run (e.g. the session pipeline's sources and ranker,
        whose part names would otherwise collide with the user pipeline's)."""
        sub = Run(self.path / name)
        if create:
            sub.path.mkdir(parents=True, exist_ok=True)
        return sub

    # ------------------------------------------------------------------ parts
    def file(self, name: str) -> Path:
        """The path of part ``name`` (with its extension), for writers that need a path (a
        LightGBM model, training arrays handed to Ray workers)."""
        return self.path / name

    def part(self, name: str, kind: PartKind) -> Path:
        """The file of part ``name`` of ``kind`` (for messages and existence checks)."""
        return self.path / f"{name}{SUFFIXES[kind]}"

    def has(self, name: str, kind: PartKind | None = None) -> bool:
        """Whether part ``name`` of ``kind`` exists (no kind: ``name`` is a file name)."""
        return (self.path / name if kind is None else self.part(name, kind)).exists()

    def remove(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)

    @cached_property
    def manifest(self) -> dict[str, Any]:
        path = self.path / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: {self.path} is not a complete run.")
        return json.loads(path.read_text())

    def write_manifest(self, body: Mapping[str, Any]) -> None:
        """Written last by ``recsys train``: a run with a manifest is complete."""
        self.write_json(self.path.joinpath(MANIFEST).stem, body)
        self.__dict__.pop("manifest", None)

    def _replace(self, path: Path, write: Any) -> None:
        """``write(tmp_path)`` then rename over ``path``: a reader (the API following a new
        run) never sees half a file."""
        tmp = path.with_name(f".{path.name}.tmp")
        write(tmp)
        tmp.replace(path)

    def write_json(self, name: str, body: Any) -> None:
        text = json.dumps(body, indent=2, default=str)
        self._replace(self.part(name, "json"), lambda tmp: tmp.write_text(text))

    def read_json(self, name: str) -> Any:
        return json.loads(self._existing(name, "json").read_text())

    def write_text(self, name: str, text: str) -> None:
        self._replace(self.part(name, "text"), lambda tmp: tmp.write_text(text))

    def read_text(self, name: str) -> str:
        return self._existing(name, "text").read_text()

    def write_table(self, name: str, table: pd.DataFrame | pa.Table) -> None:
        """Parquet from a frame (``frame.attrs``, small metadata such as fit parameters, is
        kept) or from an Arrow table (its schema and metadata as given)."""
        path = self.part(name, "table")
        if isinstance(table, pa.Table):
            self._replace(path, lambda tmp: pq.write_table(table, tmp))
        else:
            self._replace(path, lambda tmp: table.to_parquet(tmp, index=False))

    def read_table(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self._existing(name, "table"))

    def read_arrow(self, name: str) -> pa.Table:
        return pq.read_table(self._existing(name, "table"))

    def _existing(self, name: str, kind: PartKind) -> Path:
        path = self.part(name, kind)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: the run was trained without it or by an older version; "
                "run `recsys train` again."
            )
        return path

    def write_tensors(self, name: str, tensors: Mapping[str, Any]) -> None:
        """safetensors: torch tensors or numpy arrays (all of one kind)."""
        path = self.part(name, "tensors")
        first = next(iter(tensors.values()), None)
        if isinstance(first, np.ndarray):
            from safetensors.numpy import save_file

            arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
            self._replace(path, lambda tmp: save_file(arrays, tmp))
        else:
            from safetensors.torch import save_file as save_torch

            torch_tensors = {k: v.contiguous() for k, v in tensors.items()}
            self._replace(path, lambda tmp: save_torch(torch_tensors, tmp))

    def read_tensors(self, name: str, framework: str = "numpy") -> dict[str, Any]:
        path = self._existing(name, "tensors")
        if framework == "numpy":
            from safetensors.numpy import load_file

            return load_file(path)
        from safetensors.torch import load_file as load_torch

        return load_torch(path)

    # ------------------------------------------------------------------ item vectors
    def write_item_vectors(self, vectors: np.ndarray) -> None:
        """The two-tower item vectors in vocabulary order, row 0 (the unknown item) zeros."""
        self.write_tensors(ITEM_VECTORS, {"vectors": vectors.astype(np.float32, copy=False)})

    def item_vectors(self) -> np.ndarray:
        return self.read_tensors(ITEM_VECTORS)["vectors"]
