"""One answer to "is this value missing?" for rows that come from pandas, Feast or JSON.

Feast online rows, Parquet payloads and request bodies mix None, float NaN, ``pandas.NA``,
``NaT`` and numpy scalars; the API's responses, vector payloads, text inputs and ranker
features all need them told apart the same way.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def is_missing(value: Any) -> bool:
    """None, NaN (float or numpy), ``pandas.NA`` or ``NaT``; lists and strings never are."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, str | bytes | list | tuple | dict | np.ndarray):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def json_value(value: Any) -> Any:
    """A JSON-safe scalar: missing values become None, numpy scalars plain Python, and numbers
    floats (booleans stay booleans)."""
    if is_missing(value):
        return None
    value = value.item() if hasattr(value, "item") else value
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def finite_float(value: Any, default: float = math.nan) -> float:
    """``value`` as a finite float, else ``default`` (missing, text, inf)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default
