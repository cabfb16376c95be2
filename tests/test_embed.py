"""Item embeddings: real MiniLM through Ray Data, the content-hash cache, and a tiny CLIP.

One Ray runtime serves the whole module (start-up is seconds); the Ray text run is done once
and shared, later checks run in-process on copies of its cache to keep the file well under a
minute on two cores.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import models.image_encoder as image_encoder
from models.image_encoder import ImageEncoder
from models.text_encoder import ModelFolderError, TextEncoder, default_model_path, item_text
from pipelines.embed import EmbedSummary, embed_items, read_vectors, resolve_precision
from recsys.core.settings import EmbedSettings, RaySettings, Settings

needs_pil = pytest.mark.skipif(
    importlib.util.find_spec("PIL") is None,
    reason="Pillow is not installed: CLIPImageProcessor and image files need it",
)

COLOURS = ("navy", "white", "red", "green", "grey", "beige")
PRODUCTS = (
    ("tops", "t-shirt", "Cotton T-Shirt", "soft organic cotton tee with a crew neck"),
    ("bottoms", "jeans", "Slim Jeans", "stretch denim jeans in a slim fit"),
    ("outerwear", "coat", "Wool Coat", "warm wool blend coat with a notch collar"),
    ("accessories", "scarf", "Knitted Scarf", "chunky knit scarf for cold days"),
    ("shoes", "trainers", "Running Trainers", "lightweight trainers made to move"),
)


def _items() -> pd.DataFrame:
    """30 canonical-like items: three with known meanings, the rest varied combinations."""
    rows = [
        ("i000", "Black Leather Boots", "Black leather boots with a chunky sole.", "shoes",
         "boots", "black", "womenswear", "classic"),
        ("i001", "Dark Leather Ankle Boots", "Dark leather ankle boots with a low block heel.",
         "shoes", "boots", "brown", "womenswear", "classic"),
        ("i002", "Floral Summer Dress", "A light floral summer dress in flowing viscose.",
         "dresses", "midi dress", "pink", "womenswear", "boho"),
    ]  # fmt: skip
    for n in range(27):
        category, ptype, title, desc = PRODUCTS[n % len(PRODUCTS)]
        colour = COLOURS[n % len(COLOURS)]
        dept = ("menswear", "womenswear")[n % 2]
        rows.append(
            (f"i{n + 3:03d}", f"{colour.title()} {title}", f"{desc}, in {colour}.", category,
             ptype, colour, dept, "casual")
        )  # fmt: skip
    cols = ["item_id", "title", "description", "category", "product_type", "colour",
            "department", "style"]  # fmt: skip
    frame = pd.DataFrame(rows, columns=cols)
    frame["price"] = 20.0 + np.arange(len(frame))
    frame["in_stock"] = True
    return frame


def read_embeddings(path: Path) -> tuple[list[str], np.ndarray]:
    """The item ids and vectors of an embeddings Parquet file."""
    table = pq.read_table(path)
    return table.column("item_id").to_pylist(), read_vectors(table, path)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A private Ray with a small object store; temp dir short for Ray's socket paths."""
    ray = pytest.importorskip("ray")
    from recsys.core.ray_runtime import ensure_ray

    ray_tmp = Path(tempfile.mkdtemp(prefix="emb-ray-", dir="/tmp"))
    s = Settings(
        home=tmp_path_factory.mktemp("embed_home"),
        ray=RaySettings(object_store_memory=256 * 1024 * 1024, temp_dir=ray_tmp),
        embed=EmbedSettings(precision="float32"),  # compared with the float32 encoder below
    )
    ensure_ray(s)
    yield s
    ray.shutdown()
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def items_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("items") / "items.parquet"
    _items().to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def ray_run(settings: Settings, items_file: Path) -> tuple[EmbedSummary, Path, Path]:
    """The text embeddings of all items, computed through Ray Data: (summary, out, cache)."""
    root = items_file.parent
    summary = embed_items(
        items_file, root / "text.parquet", root / "cache", settings=settings, use_ray=True
    )
    return summary, root / "text.parquet", root / "cache"


def test_item_text_spells_out_attributes_and_skips_unknowns() -> None:
    row = {"title": "Navy Shirt", "description": "Crisp cotton.", "category": "tops",
           "colour": "navy", "style": "unknown", "department": None, "price": 30.0}  # fmt: skip
    assert item_text(row) == "Navy Shirt. Crisp cotton. category: tops; colour: navy"


def test_text_through_ray_is_unit_384d_and_sensible(ray_run: tuple) -> None:
    summary, out, _ = ray_run
    assert summary.backend == "ray"
    assert (summary.items, summary.hits, summary.misses, summary.dim) == (30, 0, 30, 384)
    ids, vec = read_embeddings(out)
    assert ids == _items()["item_id"].tolist()
    assert vec.dtype == np.float32 and vec.shape == (30, 384)
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    boots, ankle_boots, dress = vec[0], vec[1], vec[2]
    assert boots @ ankle_boots > boots @ dress + 0.1


def test_rerun_is_all_cache_hits_with_identical_vectors(
    ray_run: tuple, items_file: Path, settings: Settings, tmp_path: Path
) -> None:
    _, out, cache = ray_run
    again = embed_items(items_file, tmp_path / "again.parquet", cache, settings=settings)
    assert (again.hits, again.misses, again.encoded, again.backend) == (30, 0, 0, "cache")
    assert np.array_equal(read_embeddings(out)[1], read_embeddings(tmp_path / "again.parquet")[1])


def test_changed_description_re_embeds_exactly_that_item(
    ray_run: tuple, items_file: Path, settings: Settings, tmp_path: Path
) -> None:
    _, out, cache = ray_run
    shutil.copytree(cache, tmp_path / "cache")
    items = _items()
    items.loc[5, "description"] = "A completely different description about silk pyjamas."
    edited = tmp_path / "items.parquet"
    items.to_parquet(edited, index=False)
    summary = embed_items(edited, tmp_path / "text.parquet", tmp_path / "cache", use_ray=False,
                          settings=settings)  # fmt: skip
    assert (summary.hits, summary.misses, summary.encoded) == (29, 1, 1)
    before, after = read_embeddings(out)[1], read_embeddings(tmp_path / "text.parquet")[1]
    changed = ~np.all(before == after, axis=1)
    assert changed.tolist() == [i == 5 for i in range(30)]
    # The cache now holds both versions: reverting the edit costs nothing.
    back = embed_items(items_file, tmp_path / "b.parquet", tmp_path / "cache", use_ray=False,
                       settings=settings)  # fmt: skip
    assert back.misses == 0


def test_in_process_matches_ray_and_is_deterministic(
    ray_run: tuple, items_file: Path, settings: Settings, tmp_path: Path
) -> None:
    expected = read_embeddings(ray_run[1])[1]
    local = embed_items(items_file, tmp_path / "local.parquet", tmp_path / "cache", use_ray=False,
                        settings=settings)  # fmt: skip
    assert (local.backend, local.misses, local.dim) == ("in-process", 30, 384)
    np.testing.assert_allclose(read_embeddings(tmp_path / "local.parquet")[1], expected, atol=1e-5)
    encoder = TextEncoder(default_model_path(), batch_size=7)
    texts = [item_text(r) for r in _items().to_dict("records")]
    first, second = encoder.encode(texts), encoder.encode(texts)
    assert np.array_equal(first, second)
    np.testing.assert_allclose(first, expected, atol=1e-5)


def test_bfloat16_keeps_the_vectors_in_its_own_cache(
    ray_run: tuple, items_file: Path, settings: Settings, tmp_path: Path
) -> None:
    """bfloat16 arithmetic where the CPU has it: the same neighbours, nearly the same vectors,
    a cache file of its own (float32's keeps its name)."""
    fp32_summary, fp32_out, _ = ray_run
    bf16 = settings.model_copy(update={"embed": EmbedSettings(precision="bfloat16")})
    summary = embed_items(items_file, tmp_path / "bf16.parquet", tmp_path / "cache",
                          use_ray=False, settings=bf16)  # fmt: skip
    assert summary.precision == "bfloat16" and summary.misses == 30
    assert summary.model_hash != fp32_summary.model_hash
    assert Path(summary.cache_path).name != Path(fp32_summary.cache_path).name
    a, b = read_embeddings(fp32_out)[1], read_embeddings(tmp_path / "bf16.parquet")[1]
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert (a * b).sum(axis=1).min() > 0.999
    assert np.array_equal(np.argsort(-(a @ a.T), 1)[:, :3], np.argsort(-(b @ b.T), 1)[:, :3])
    auto = resolve_precision("auto")
    assert auto in ("float32", "bfloat16") and resolve_precision("float32") == "float32"


def test_bad_model_path_names_the_folder_and_what_it_needs(
    tmp_path: Path, items_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelFolderError, match=r"no-such-model does not exist.*config\.json"):
        TextEncoder(missing)
    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises(ModelFolderError, match=r"empty-model has no config\.json"):
        TextEncoder(empty)
    with pytest.raises(ModelFolderError, match="image model folder"):
        ImageEncoder(missing)
    with pytest.raises(ModelFolderError, match="no-such-model"):
        embed_items(items_file, tmp_path / "o.parquet", tmp_path / "c", model_path=missing)
    assert not (tmp_path / "o.parquet").exists()
    with pytest.raises(ValueError, match="kind='image' needs model_path"):
        embed_items(items_file, tmp_path / "o.parquet", tmp_path / "c", kind="image")
    # a complete image model folder, but no Pillow to read images with
    (empty / "config.json").write_text("{}")
    (empty / "preprocessor_config.json").write_text("{}")
    monkeypatch.setattr(image_encoder.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="Pillow"):
        ImageEncoder(empty)


def _tiny_clip_config(full: bool) -> Any:
    from transformers import CLIPConfig, CLIPVisionConfig

    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=4, image_size=32, patch_size=8)  # fmt: skip
    if not full:
        return CLIPVisionConfig(**vision, projection_dim=16)
    # A text side on MiniLM's (BERT) vocabulary, so its tokenizer files can be reused.
    text = dict(vocab_size=30522, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=64, pad_token_id=0,
                bos_token_id=101, eos_token_id=102)  # fmt: skip
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def test_clip_folder_text_side_uses_projection(tmp_path: Path) -> None:
    """A FashionCLIP-style folder: text vectors come from CLIP's projection (dim 16 here)."""
    import torch
    from transformers import CLIPModel

    torch.manual_seed(0)
    CLIPModel(_tiny_clip_config(full=True)).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(default_model_path() / name, tmp_path / name)
    encoder = TextEncoder(tmp_path)
    vec = encoder.encode(["black leather boots", "floral summer dress " * 40])
    assert encoder.pooling == "clip_projection" and encoder.max_length == 64
    assert vec.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)


@needs_pil
def test_image_embeddings_with_tiny_clip(tmp_path: Path) -> None:
    import torch
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    model_dir = tmp_path / "tiny-clip"
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(_tiny_clip_config(full=False)).save_pretrained(model_dir)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32).save_pretrained(model_dir)

    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    for n in range(4):
        pixels = rng.integers(0, 256, size=(40 + 8 * n, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "img" / f"i{n}.png")
    items = pd.DataFrame(
        {"item_id": [f"i{n}" for n in range(4)], "image_path": [f"img/i{n}.png" for n in range(4)]}
    )
    items.to_parquet(tmp_path / "items.parquet", index=False)

    args = (tmp_path / "items.parquet", tmp_path / "img.parquet", tmp_path / "cache")
    # In-process: the batch function is the one Ray runs (tested above for text), and a second
    # Ray actor start-up would cost ~10 s of this file's budget.
    fp32 = Settings(home=tmp_path, embed=EmbedSettings(precision="float32"))  # as `direct`
    first = embed_items(*args, kind="image", model_path=model_dir, use_ray=False, batch_size=3,
                        progress=False, settings=fp32)  # fmt: skip
    assert (first.backend, first.items, first.misses, first.dim) == ("in-process", 4, 4, 16)
    ids, vec = read_embeddings(tmp_path / "img.parquet")
    assert ids == ["i0", "i1", "i2", "i3"] and vec.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vec[0], vec[1])
    direct = ImageEncoder(model_dir).encode([str(tmp_path / "img" / "i2.png")])
    np.testing.assert_allclose(direct[0], vec[2], atol=1e-5)

    again = embed_items(*args, kind="image", model_path=model_dir, use_ray=False, settings=fp32)
    assert (again.hits, again.misses, again.backend) == (4, 0, "cache")
    assert np.array_equal(read_embeddings(tmp_path / "img.parquet")[1], vec)
