"""Read the validated catalogue: item attributes (``recsys features``) and titles.

Training encodes these rows, ``recsys index`` writes them as search payloads and the API copies
them into its responses; the three read them here so they agree on order and missing values.
"""

from __future__ import annotations

import pandas as pd

from recsys.core.schema import ITEM_ATTRIBUTES, table_path
from recsys.core.settings import Settings


def load_item_attributes(settings: Settings) -> pd.DataFrame:
    """The ``item_attributes`` table of ``recsys features`` (one row per item and day)."""
    path = settings.features_dir / f"{ITEM_ATTRIBUTES}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `recsys features` first.")
    return pd.read_parquet(path)


def item_titles(settings: Settings) -> pd.DataFrame:
    """(item_id, title) of the validated catalogue, one row per item."""
    path = table_path(settings.validated_dir, "items")
    return pd.read_parquet(path, columns=["item_id", "title"]).drop_duplicates("item_id")


def item_frame(attributes: pd.DataFrame, item_ids: list[str]) -> pd.DataFrame:
    """Catalogue rows in the given order (vocabulary order: row i = item index i + 1)."""
    frame = attributes.drop_duplicates("item_id", keep="last").set_index("item_id")
    return frame.reindex(item_ids).rename_axis("item_id").reset_index()


def item_payloads(settings: Settings, item_ids: list[str]) -> pd.DataFrame:
    """Catalogue attributes, title and extra catalogue columns, one row per item id in order
    (a missing title is the item id)."""
    attributes = item_frame(load_item_attributes(settings), item_ids)
    frame = attributes.merge(item_titles(settings), on="item_id", how="left")
    frame["title"] = frame["title"].fillna(frame["item_id"])
    return frame
