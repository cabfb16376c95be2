"""Model runs on disk: safetensors weights, encoders, tables and a JSON manifest.

A run folder is self-describing (config, data snapshot, metrics) and loads without pickle, so a
serving process can trust what it reads. ``artifacts/current`` names the run that serves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from models.encoding import ItemEncoder, UserEncoder, load_encoders, save_encoders
from models.two_tower import WEIGHTS, TwoTower, TwoTowerConfig

MANIFEST = "manifest.json"
CURRENT = "current"


def save_run(
    run_dir: Path,
    model: TwoTower,
    users: UserEncoder,
    items: ItemEncoder,
    manifest: dict[str, Any],
) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, run_dir / WEIGHTS)
    save_encoders(run_dir, users, items)
    body = {"model_config": model.cfg.to_dict(), **manifest}
    (run_dir / MANIFEST).write_text(json.dumps(body, indent=2, default=str))
    return run_dir


def set_current(artifacts_dir: Path, run_dir: Path) -> None:
    """Point ``current`` at ``run_dir`` atomically (a text file, portable across filesystems)."""
    tmp = artifacts_dir / f".{CURRENT}.tmp"
    tmp.write_text(run_dir.name)
    tmp.replace(artifacts_dir / CURRENT)


def current_run(artifacts_dir: Path) -> Path:
    marker = artifacts_dir / CURRENT
    if not marker.exists():
        raise FileNotFoundError(f"no trained model under {artifacts_dir}: run `recsys train`.")
    return artifacts_dir / marker.read_text().strip()


def load_run(run_dir: Path) -> tuple[TwoTower, UserEncoder, ItemEncoder, dict[str, Any]]:
    manifest = json.loads((run_dir / MANIFEST).read_text())
    model = TwoTower(TwoTowerConfig(**manifest["model_config"]))
    model.load_state_dict(load_file(run_dir / WEIGHTS))
    model.eval()
    users, items = load_encoders(run_dir)
    return model, users, items, manifest


def to_tensors(arrays: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in arrays.items()}
