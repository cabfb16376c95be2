"""Image embeddings of product photos with a local CLIP-style vision model.

Fashion search and "looks like this" recommendations work best in a space where pictures and
words meet, which is what CLIP models (FashionCLIP, OpenCLIP exports, ...) are trained for. The
encoder reads any folder that ``CLIPVisionModelWithProjection.from_pretrained`` accepts (a full
CLIP checkpoint or its vision half) together with the image processor saved next to it, and
returns the L2-normalised ``image_embeds``: the same projection the text side of that CLIP model
uses, so :class:`models.text_encoder.TextEncoder` on the same folder gives comparable vectors.

No weights ship with the platform for images: bring a folder (``save_pretrained`` output).
Images are read with Pillow, which transformers' CLIP image processor needs as well.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from models.text_encoder import ModelFolderError, check_model_dir, load_clip_tower

log = logging.getLogger(__name__)

PROCESSOR_FILE = "preprocessor_config.json"


class ImageEncoder:
    """Embed image files with a CLIP vision tower; load once, ``encode`` many times."""

    def __init__(self, model_path: str | Path, batch_size: int = 32, device: str = "cpu") -> None:
        self.model_path = check_model_dir(model_path, "image model")
        if not (self.model_path / PROCESSOR_FILE).is_file():
            raise ModelFolderError(
                f"image model folder {self.model_path} has no {PROCESSOR_FILE}: save the "
                "model's image processor next to it (e.g. "
                "`CLIPImageProcessor(...).save_pretrained(folder)`), so that images are resized "
                "and normalised the way the model was trained."
            )
        if importlib.util.find_spec("PIL") is None:  # transformers' own message is cryptic
            raise ImportError(
                "image embeddings need Pillow (to read the image files, and for transformers' "
                "CLIPImageProcessor), which is not installed in this Python environment "
                "(`import PIL` fails). Install the `pillow` package, or embed text only "
                "(kind='text')."
            )
        self.batch_size = batch_size
        self.device = device
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoImageProcessor

        try:
            self.processor = AutoImageProcessor.from_pretrained(
                self.model_path, local_files_only=True
            )
            self.model = load_clip_tower(self.model_path, "vision")
        except (OSError, ValueError) as exc:
            raise ModelFolderError(
                f"could not load a CLIP vision model and image processor from "
                f"{self.model_path}: {exc}. The folder needs config.json (a CLIP or CLIP "
                f"vision config), the weights and {PROCESSOR_FILE}."
            ) from exc
        self.model.to(device).eval()
        self.dim = int(self.model.config.projection_dim)
        log.info("image encoder %s (dim %d) on %s", self.model_path.name, self.dim, device)

    @staticmethod
    def _open(path: str) -> Any:  # a PIL image; Pillow is imported lazily
        from PIL import Image

        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"cannot read image {path}: {exc}. Check that the file exists and is a "
                "PNG/JPEG/WebP that Pillow can open."
            ) from exc

    def encode(self, paths: list[str]) -> np.ndarray:
        """``(len(paths), dim)`` float32 unit vectors, one per image file, in order."""
        import torch

        out = np.zeros((len(paths), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(paths), self.batch_size):
                images = [self._open(str(p)) for p in paths[start : start + self.batch_size]]
                pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
                vec = self.model(pixel_values=pixels.to(self.device)).image_embeds
                vec = torch.nn.functional.normalize(vec.float(), p=2, dim=1)
                out[start : start + len(images)] = vec.cpu().numpy()
        return out
