"""Synthetic fashion shop data with structure a recommender can learn.

The generator plants the signals that real fashion logs carry, so that a model which learns
them measurably beats popularity:

* **Taste**: each user has a hidden preference over styles (casual, classic, ...), colours and
  categories, mostly shops one department, and older users lean classic.
* **Long tail**: item popularity is log-normal, so a few items take a large share of views.
* **Outfits**: buying a top often comes with bottoms of the same style (and the reverse), which
  is what "frequently bought together" should find.
* **Drift**: a share of the catalogue launches during the period, sessions favour items launched
  in the last weeks, and user taste moves slowly from one style mix to another.
* **Sequential browsing**: every item has a fixed strip of related items ("you may also like":
  similar items, with complete-the-look items of the outfit category), and a session mostly
  moves from the product on screen to one of its related items, earlier slots more often. The
  next item thus depends on the last one or two, which is what session-based recommenders learn
  and what co-occurrence alone cannot see.

``event_types`` keeps a subset of the events (a click-only shop: views alone) without changing
the views, users or items a seed gives.

Users are generated in fixed-size blocks with a per-block random stream, so output is identical
for a seed and end date, and memory stays bounded: 10M interactions stream to Parquet block by
block.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.core.schema import EVENT_TYPES, INTERACTIONS, ITEMS, USERS, table_path
from recsys.core.terminal import track

log = logging.getLogger(__name__)

STYLES = ("casual", "classic", "sporty", "boho", "street", "minimal")
DEPARTMENTS = ("womenswear", "menswear")
COLOURS = (
    "black", "white", "navy", "blue", "grey", "beige",
    "red", "green", "pink", "brown", "yellow", "khaki",
)  # fmt: skip
# category -> (share of catalogue, {department: product types}, base price)
CATEGORIES: dict[str, tuple[float, dict[str, tuple[str, ...]], float]] = {
    "tops": (0.28, {"womenswear": ("t-shirt", "blouse", "shirt", "sweater", "hoodie"),
                    "menswear": ("t-shirt", "shirt", "polo", "sweater", "hoodie")}, 28.0),
    "bottoms": (0.20, {"womenswear": ("jeans", "trousers", "skirt", "shorts"),
                       "menswear": ("jeans", "chinos", "trousers", "shorts")}, 40.0),
    "dresses": (0.10, {"womenswear": ("midi dress", "maxi dress", "mini dress")}, 55.0),
    "outerwear": (0.12, {"womenswear": ("jacket", "coat", "blazer"),
                         "menswear": ("jacket", "coat", "blazer")}, 90.0),
    "shoes": (0.16, {"womenswear": ("trainers", "boots", "heels", "sandals"),
                     "menswear": ("trainers", "boots", "loafers")}, 70.0),
    "accessories": (0.14, {"womenswear": ("bag", "scarf", "belt", "hat"),
                           "menswear": ("bag", "scarf", "belt", "cap")}, 22.0),
}  # fmt: skip
CATEGORY_NAMES = tuple(CATEGORIES)
STYLE_PRICE = {"casual": 0.8, "classic": 1.4, "sporty": 1.0, "boho": 0.9, "street": 1.1,
               "minimal": 1.3}  # fmt: skip
# Colours each style favours (the rest get a small weight).
STYLE_COLOURS = {
    "casual": ("blue", "navy", "white", "grey", "green"),
    "classic": ("black", "navy", "white", "beige", "brown"),
    "sporty": ("black", "white", "grey", "red", "blue"),
    "boho": ("brown", "beige", "green", "pink", "khaki"),
    "street": ("black", "khaki", "grey", "yellow", "white"),
    "minimal": ("white", "grey", "black", "beige", "navy"),
}
STYLE_WORDS = {
    "casual": ("Relaxed", "easy everyday piece"), "classic": ("Tailored", "timeless cut"),
    "sporty": ("Active", "made to move"), "boho": ("Flowing", "free-spirited festival look"),
    "street": ("Oversized", "bold urban attitude"), "minimal": ("Clean", "pared-back essential"),
}  # fmt: skip
MATERIALS = ("cotton", "organic cotton", "linen", "wool blend", "recycled polyester", "denim",
             "viscose", "leather-look")  # fmt: skip
FITS = ("regular fit", "slim fit", "relaxed fit", "oversized fit")
# Complementary categories: what an outfit adds to a purchase of the key category.
OUTFIT_PAIRS = {"tops": "bottoms", "bottoms": "tops", "dresses": "shoes"}

# Related-items strip of a product page: RELATED slots of similar items (same department, style
# and category); for a category in OUTFIT_PAIRS the COMPLEMENT_SLOTS show complete-the-look
# items of the paired category instead. A click on slot k is weighted RELATED_DECAY**k, so
# which item follows which is learnable, not only which group. Strip members are drawn by
# popularity**RELATED_POP_POWER: best sellers sit in more strips, but damped, so that the
# strips of one group's items differ (with plain popularity they all show the same few best
# sellers, and the last item says little more than its group).
RELATED = 8
COMPLEMENT_SLOTS = (2, 5)
RELATED_DECAY = 0.7
RELATED_POP_POWER = 0.5
# How a view after the first is reached: a related item of the product on screen, or (back one
# page) of the product before it; otherwise back on the listing, a fresh draw from the
# session's group. Most steps follow a strip, so order carries signal that co-occurrence
# cannot see, while a third stay group-level browsing, so co-occurrence remains a fair
# baseline rather than a straw man.
P_FROM_LAST = 0.5
P_FROM_PREVIOUS = 0.15

USER_BLOCK = 4_096
SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class SynthSummary:
    """What a generation run wrote."""

    users: int
    items: int
    interactions: int
    purchases: int
    start: datetime
    end: datetime
    out_dir: Path


@dataclass(frozen=True)
class _Catalog:
    """Items sorted by (group, launch day) so eligible items of a group are a contiguous run."""

    frame: pd.DataFrame  # canonical items table, in sorted order
    group_key: np.ndarray  # group * stride + launch day offset, ascending
    cum_weight: np.ndarray  # global cumulative popularity in sorted order
    group_start: np.ndarray  # first sorted index of each group
    group_end: np.ndarray  # one past the last sorted index of each group
    colour_idx: np.ndarray
    category_idx: np.ndarray
    price: np.ndarray
    launch_day: np.ndarray  # -1: on sale before the window
    related: np.ndarray  # (items, RELATED) sorted indices of the related strip, -1 = empty slot
    stride: int


def _group(dept: np.ndarray, style: np.ndarray, cat: np.ndarray) -> np.ndarray:
    return (dept * len(STYLES) + style) * len(CATEGORY_NAMES) + cat


def _make_catalog(rng: np.random.Generator, n_items: int, days: int, start: datetime) -> _Catalog:
    dept = (rng.random(n_items) < 0.4).astype(np.int64)  # 60% womenswear
    shares = np.array([CATEGORIES[c][0] for c in CATEGORY_NAMES])
    cat = np.empty(n_items, dtype=np.int64)
    for d, name in enumerate(DEPARTMENTS):
        allowed = np.array([name in CATEGORIES[c][1] for c in CATEGORY_NAMES], dtype=float)
        p = shares * allowed
        mask = dept == d
        cat[mask] = rng.choice(len(CATEGORY_NAMES), size=int(mask.sum()), p=p / p.sum())
    style = rng.integers(0, len(STYLES), n_items)
    colour = np.empty(n_items, dtype=np.int64)
    for s, sname in enumerate(STYLES):
        p = np.full(len(COLOURS), 0.15)
        for c in STYLE_COLOURS[sname]:
            p[COLOURS.index(c)] = 1.0
        mask = style == s
        colour[mask] = rng.choice(len(COLOURS), size=int(mask.sum()), p=p / p.sum())
    base = np.array([CATEGORIES[CATEGORY_NAMES[c]][2] for c in cat])
    mult = np.array([STYLE_PRICE[STYLES[s]] for s in style])
    price = np.round(base * mult * rng.lognormal(0.0, 0.3, n_items), 0) - 0.01
    popularity = rng.lognormal(0.0, 1.3, n_items)
    # 70% of the catalogue exists before the window; the rest launches during it (drift).
    launched_during = rng.random(n_items) < 0.3
    launch_day = np.where(launched_during, rng.integers(0, days, n_items), -1)

    product_type, titles, descriptions = [], [], []
    for i in range(n_items):
        dname, cname, sname = DEPARTMENTS[dept[i]], CATEGORY_NAMES[cat[i]], STYLES[style[i]]
        types = CATEGORIES[cname][1][dname]
        ptype = types[rng.integers(0, len(types))]
        product_type.append(ptype)
        adjective, phrase = STYLE_WORDS[sname]
        colour_name = COLOURS[colour[i]]
        titles.append(f"{colour_name.title()} {adjective} {ptype.title()}")
        material = MATERIALS[rng.integers(0, len(MATERIALS))]
        fit = FITS[rng.integers(0, len(FITS))]
        descriptions.append(
            f"{adjective} {ptype} in {colour_name} {material}, {fit}. A {sname} {phrase} "
            f"from our {dname} {cname} range."
        )
    n_groups = len(DEPARTMENTS) * len(STYLES) * len(CATEGORY_NAMES)
    stride = days + 2
    group = _group(dept, style, cat)
    # Every non-empty group has an item on sale from the start, so no session has to pick an
    # item before its launch.
    launch_day[np.unique(group, return_index=True)[1]] = -1
    key = group * stride + (launch_day + 1)
    order = np.argsort(key, kind="stable")
    launch_ts = [
        start + timedelta(days=int(d)) if d >= 0 else start - timedelta(days=30) for d in launch_day
    ]
    frame = (
        pd.DataFrame(
            {
                "item_id": [f"i{i:06d}" for i in range(n_items)],
                "title": titles,
                "description": descriptions,
                "category": [CATEGORY_NAMES[c] for c in cat],
                "product_type": product_type,
                "colour": [COLOURS[c] for c in colour],
                "department": [DEPARTMENTS[d] for d in dept],
                "style": [STYLES[s] for s in style],
                "price": price,
                "in_stock": rng.random(n_items) < 0.95,
                "launch_date": pd.to_datetime(launch_ts, utc=True),
            }
        )
        .iloc[order]
        .reset_index(drop=True)
    )
    sorted_group = group[order]
    cum_weight = np.cumsum(popularity[order])
    group_start = np.searchsorted(sorted_group, np.arange(n_groups), "left")
    group_end = np.searchsorted(sorted_group, np.arange(n_groups), "right")
    # Drawn last, so the items table is what the same seed gave before strips existed.
    related = _related_items(rng, sorted_group, popularity[order], group_start, group_end)
    return _Catalog(
        frame=frame,
        group_key=key[order],
        cum_weight=cum_weight,
        group_start=group_start,
        group_end=group_end,
        colour_idx=colour[order],
        category_idx=cat[order],
        price=price[order],
        launch_day=launch_day[order],
        related=related,
        stride=stride,
    )


def _draw_in_groups(
    rng: np.random.Generator, cum_weight: np.ndarray, lo: np.ndarray, hi: np.ndarray, k: int
) -> np.ndarray:
    """``k`` draws (with replacement, weighted as ``cum_weight`` accumulates) per row among
    sorted items ``lo .. hi-1``; one row per entry of ``lo``."""
    base = np.where(lo > 0, cum_weight[np.maximum(lo - 1, 0)], 0.0)[:, None]
    top = cum_weight[np.maximum(hi - 1, 0)][:, None]
    u = base + rng.random((len(lo), k)) * (top - base)
    return np.clip(np.searchsorted(cum_weight, u, "right"), lo[:, None], hi[:, None] - 1)


def _first_distinct(draws: np.ndarray, k: int, exclude: np.ndarray) -> np.ndarray:
    """The first ``k`` distinct values of each row of ``draws``, in draw order, leaving out
    ``exclude`` (one per row); -1 pads short rows. Skipping repeats of draws with replacement
    is sampling without replacement: heavier items tend to come first."""
    order = np.argsort(draws, axis=1, kind="stable")  # first occurrence first among equals
    ranked = np.take_along_axis(draws, order, axis=1)
    new = np.ones(draws.shape, dtype=bool)
    new[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    first = np.empty_like(new)
    np.put_along_axis(first, order, new, axis=1)
    first &= draws != exclude[:, None]
    rank = np.cumsum(first, axis=1) - 1
    rows, cols = np.nonzero(first & (rank < k))
    out = np.full((len(draws), k), -1, dtype=np.int64)
    out[rows, rank[rows, cols]] = draws[rows, cols]
    return out


def _related_items(
    rng: np.random.Generator,
    group: np.ndarray,
    popularity: np.ndarray,
    group_start: np.ndarray,
    group_end: np.ndarray,
) -> np.ndarray:
    """Each item's related strip (sorted indices, -1 = empty slot): distinct items of its
    group, and in :data:`COMPLEMENT_SLOTS` items of the paired outfit category of the same
    department and style when its category has one, drawn by damped popularity. Launch dates
    are not looked at here: a strip may show an item before it is on sale, and sessions skip
    such slots, as :func:`_sample_items` skips unlaunched items."""
    # Four draws per slot: enough distinct items unless the group is small or one item
    # dominates it, and then a shorter strip is what a shop would show too.
    cum_weight = np.cumsum(popularity**RELATED_POP_POWER)
    draws = _draw_in_groups(rng, cum_weight, group_start[group], group_end[group], 4 * RELATED)
    similar = _first_distinct(draws, RELATED, exclude=np.arange(len(group)))
    pair = np.array([CATEGORY_NAMES.index(OUTFIT_PAIRS.get(c, c)) for c in CATEGORY_NAMES])
    cat = group % len(CATEGORY_NAMES)
    pair_group = group - cat + pair[cat]
    lo, hi = group_start[pair_group], group_end[pair_group]
    outfit = np.flatnonzero((pair[cat] != cat) & (hi > lo))
    n_comp = len(COMPLEMENT_SLOTS)
    draws = _draw_in_groups(rng, cum_weight, lo[outfit], hi[outfit], 4 * n_comp)
    complement = _first_distinct(draws, n_comp, exclude=np.full(len(outfit), -1))
    related = similar.copy()
    slots = [k for k in range(RELATED) if k not in COMPLEMENT_SLOTS]
    related[outfit[:, None], slots] = similar[outfit, : len(slots)]
    related[outfit[:, None], list(COMPLEMENT_SLOTS)] = complement
    return related


def _sample_items(
    rng: np.random.Generator,
    cat: _Catalog,
    group: np.ndarray,
    day: np.ndarray,
    trending: np.ndarray,
) -> np.ndarray:
    """Popularity-weighted draw among items of ``group`` launched by ``day``.

    With ``trending`` set, the draw is restricted to items launched in the last 21 days when the
    group has any, which is how new collections take over (drift).
    """
    lo = cat.group_start[group]
    hi = np.searchsorted(cat.group_key, group * cat.stride + day + 1, "right")
    if (hi <= lo).any():
        raise AssertionError("a sampled group has no launched item")  # see _make_catalog
    recent_lo = np.searchsorted(cat.group_key, group * cat.stride + np.maximum(day - 20, 0) + 1)
    lo = np.where(trending & (recent_lo < hi) & (recent_lo > lo), recent_lo, lo)
    base = np.where(lo > 0, cat.cum_weight[np.maximum(lo - 1, 0)], 0.0)
    top = cat.cum_weight[hi - 1]
    u = base + rng.random(len(group)) * (top - base)
    idx = np.searchsorted(cat.cum_weight, u, "right")
    return np.clip(idx, lo, hi - 1)


def _browse(
    rng: np.random.Generator,
    cat: _Catalog,
    v_item: np.ndarray,
    v_seq: np.ndarray,
    v_day: np.ndarray,
    v_colour_taste: np.ndarray,
) -> None:
    """Turn views into a walk over related strips, in place: ``v_item`` holds every view's
    fresh draw (sessions contiguous, ``v_seq`` the step in the session), and each view after
    the first follows a related item of the last (:data:`P_FROM_LAST`) or the one before
    (:data:`P_FROM_PREVIOUS`) product, picked by slot and colour taste among the slots
    launched by the session's day. With no such slot the fresh draw stays.

    One vectorised pass per step index: a step needs the final item of the steps before it.
    """
    u = rng.random(len(v_item))
    from_last = (v_seq >= 1) & (u < P_FROM_LAST)
    from_prev = (v_seq >= 2) & (u >= P_FROM_LAST) & (u < P_FROM_LAST + P_FROM_PREVIOUS)
    steps = np.flatnonzero(from_last | from_prev)
    steps = steps[np.argsort(v_seq[steps], kind="stable")]
    back = np.where(from_last[steps], 1, 2)
    gumbel = rng.gumbel(size=(len(steps), RELATED))
    slot_weight = np.log(RELATED_DECAY) * np.arange(RELATED)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(v_seq[steps])) + 1, [len(steps)]])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        idx = steps[lo:hi]
        strip = cat.related[v_item[idx - back[lo:hi]]]
        ok = (
            (strip >= 0)
            & (cat.launch_day[strip] <= v_day[idx, None])
            & (strip != v_item[idx - 1, None])  # back one page: not the product just left
        )
        taste = np.take_along_axis(v_colour_taste[idx], cat.colour_idx[strip], axis=1)
        score = np.where(ok, np.log(taste + 1e-9) + slot_weight + gumbel[lo:hi], -np.inf)
        pick = score.argmax(axis=1)
        found = ok.any(axis=1)
        v_item[idx[found]] = strip[found, pick[found]]


def _user_block(
    rng: np.random.Generator, first_user: int, n: int, cat: _Catalog, cat_share: np.ndarray,
    days: int, start: datetime, keep_types: np.ndarray,
) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """Users ``first_user .. first_user+n`` and all of their sessions; ``keep_types`` masks
    :data:`EVENT_TYPES` (events of the others are generated, then dropped, so that the views
    do not depend on it)."""
    n_styles, n_colours = len(STYLES), len(COLOURS)
    age = np.clip(rng.normal(34, 11, n), 16, 80).astype(np.int32)
    female = rng.random(n) < 0.62
    home_dept = np.where(female, 0, 1)
    taste_a = rng.dirichlet(np.full(n_styles, 0.15), n)
    taste_b = rng.dirichlet(np.full(n_styles, 0.15), n)
    classic = STYLES.index("classic")
    old = np.clip((age - 30) / 40, 0, 1)
    taste_a[:, classic] += 0.6 * old
    taste_a /= taste_a.sum(axis=1, keepdims=True)
    taste_b = 0.8 * taste_a + 0.2 * taste_b  # slow drift towards a second mix
    colour_taste = rng.dirichlet(np.full(n_colours, 0.2), n)
    category_taste = rng.dirichlet(np.full(len(CATEGORY_NAMES), 0.6), n)
    activity = rng.lognormal(np.log(max(days / 12, 1.0)), 0.9, n)

    n_sessions = rng.poisson(activity)
    s_user = np.repeat(np.arange(n), n_sessions)
    m = len(s_user)
    s_time = rng.random(m) * (days - 0.05)  # in days since start; sessions end before `end`
    s_day = s_time.astype(np.int64)
    frac = (s_time / days)[:, None]
    taste = (1 - frac) * taste_a[s_user] + frac * taste_b[s_user]
    s_style = (rng.random((m, 1)) > np.cumsum(taste, axis=1)).sum(axis=1)
    s_style = np.minimum(s_style, n_styles - 1)
    s_dept = np.where(rng.random(m) < 0.92, home_dept[s_user], 1 - home_dept[s_user])
    # Category: what the department/style offers, weighted by the user's category taste.
    p_cat = cat_share[s_dept, s_style] * category_taste[s_user]
    cdf = np.cumsum(p_cat, axis=1) / p_cat.sum(axis=1, keepdims=True)
    s_cat = np.minimum((rng.random((m, 1)) > cdf).sum(axis=1), len(CATEGORY_NAMES) - 1)
    s_group = _group(s_dept, s_style, s_cat)
    s_trending = rng.random(m) < 0.2
    n_views = 1 + rng.geometric(0.3, m)

    # Views: 8 popularity-weighted candidates each, the user picks by colour taste; then each
    # view after the first mostly follows the related strip of the product before (_browse).
    v_sess = np.repeat(np.arange(m), n_views)
    v_seq = np.arange(len(v_sess)) - np.repeat(np.cumsum(n_views) - n_views, n_views)
    n_cand = 8
    per_candidate = (np.repeat(a[v_sess], n_cand) for a in (s_group, s_day, s_trending))
    cands = _sample_items(rng, cat, *per_candidate).reshape(-1, n_cand)
    v_colour_taste = colour_taste[s_user[v_sess]]
    pref = np.take_along_axis(v_colour_taste, cat.colour_idx[cands], axis=1)
    choice = np.argmax(np.log(pref + 1e-9) + rng.gumbel(size=pref.shape), axis=1)
    v_item = cands[np.arange(len(cands)), choice]
    _browse(rng, cat, v_item, v_seq, s_day[v_sess], v_colour_taste)

    # Purchase: a share of sessions buys one viewed item, preferring the favourite colour.
    buys = rng.random(m) < 0.45
    last_view = np.cumsum(n_views) - 1
    pick = np.cumsum(n_views) - n_views + rng.integers(0, 1 << 30, m) % n_views
    b_sess = np.nonzero(buys)[0]
    b_item = v_item[pick[b_sess]]
    b_seq = v_seq[last_view[b_sess]] + 1
    # Outfit completion: a complementary item of the same style and department.
    b_cat = cat.category_idx[b_item]
    pair = np.array(
        [CATEGORY_NAMES.index(OUTFIT_PAIRS.get(c, c)) for c in CATEGORY_NAMES], dtype=np.int64
    )
    has_pair = np.isin(b_cat, [CATEGORY_NAMES.index(k) for k in OUTFIT_PAIRS])
    o_mask = has_pair & (rng.random(len(b_sess)) < 0.5)
    o_sess = b_sess[o_mask]
    o_group = _group(s_dept[o_sess], s_style[o_sess], pair[b_cat[o_mask]])
    o_nonempty = cat.group_end[o_group] > cat.group_start[o_group]
    o_sess, o_group = o_sess[o_nonempty], o_group[o_nonempty]
    o_item = _sample_items(rng, cat, o_group, s_day[o_sess], s_trending[o_sess])
    o_seq = b_seq[o_mask][o_nonempty] + 2

    # Event rows: views, cart+purchase of the chosen item, view+cart+purchase of the pair item.
    ev_sess = np.concatenate([v_sess, b_sess, b_sess, o_sess, o_sess, o_sess])
    ev_item = np.concatenate([v_item, b_item, b_item, o_item, o_item, o_item])
    ev_seq = np.concatenate([v_seq, b_seq, b_seq + 1, o_seq, o_seq + 1, o_seq + 2])
    ev_type = np.repeat(  # indices into EVENT_TYPES: view, add_to_cart, purchase
        np.array([0, 1, 2, 0, 1, 2], np.int8), [len(v_sess)] + [len(b_sess)] * 2 + [len(o_sess)] * 3
    )
    # Steps are 90 s apart plus jitter below one step, so events keep their order in a session.
    jitter = rng.uniform(0, 60, len(ev_sess))
    seconds = s_time[ev_sess] * SECONDS_PER_DAY + ev_seq * 90.0 + jitter
    seconds = np.minimum(seconds, days * SECONDS_PER_DAY - 1)
    order = np.lexsort((seconds, ev_sess))
    order = order[keep_types[ev_type[order]]]
    ev_sess, ev_item, ev_type, seconds = (a[order] for a in (ev_sess, ev_item, ev_type, seconds))
    event_names = np.array(EVENT_TYPES, dtype=object)
    users_global = first_user + s_user[ev_sess]
    ts = pd.Timestamp(start) + pd.to_timedelta(np.round(seconds * 1e6).astype(np.int64), "us")
    interactions = pd.DataFrame(
        {
            "user_id": pd.Series([f"u{u:07d}" for u in users_global], dtype=object),
            "item_id": cat.frame["item_id"].to_numpy()[ev_item],
            "timestamp": ts,
            "event_type": event_names[ev_type],
            "value": np.ones(len(ev_sess)),
            "price": cat.price[ev_item],
            "session_id": [f"s{first_user + s_user[s]:07d}-{s:05d}" for s in ev_sess],
        }
    )
    signup = pd.Timestamp(start) - pd.to_timedelta(rng.integers(1, 720, n), "D")
    users = pd.DataFrame(
        {
            "user_id": [f"u{first_user + i:07d}" for i in range(n)],
            "age": age,
            "gender": np.where(female, "female", "male"),
            "signup_date": signup,
        }
    )
    return interactions, users


def _arrow(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


def generate(
    out_dir: Path,
    users: int,
    items: int,
    days: int,
    seed: int,
    end_date: date | None = None,
    progress: bool = True,
    event_types: Sequence[str] = EVENT_TYPES,
) -> SynthSummary:
    """Write ``interactions``, ``items`` and ``users`` Parquet tables to ``out_dir``.

    ``end_date`` is the day after the last event (midnight UTC); it defaults to today so that
    a demo's data is "recent". The same seed and end date give identical files.
    ``event_types`` are the events written: ``("view",)`` makes a click-only shop, like the
    session logs of shops that export no orders, with the same views as the full shop.
    """
    if users < 1 or items < 20 or days < 2:
        raise ValueError("synth needs users >= 1, items >= 20 and days >= 2")
    unknown = sorted(set(event_types) - set(EVENT_TYPES))
    if unknown or not event_types:
        wrong = f"unknown {', '.join(map(repr, unknown))}" if unknown else "none given"
        raise ValueError(
            f"synth event types: {wrong}; allowed are {', '.join(EVENT_TYPES)} "
            "(a click-only shop: view)"
        )
    keep_types = np.isin(np.array(EVENT_TYPES), list(event_types))
    end_day = end_date or datetime.now(UTC).date()
    end = datetime(end_day.year, end_day.month, end_day.day, tzinfo=UTC)
    start = end - timedelta(days=days)
    out_dir.mkdir(parents=True, exist_ok=True)
    catalog = _make_catalog(np.random.default_rng([seed, 0]), items, days, start)
    # Catalogue share of each category per (department, style), zero where a group is empty.
    sizes = (catalog.group_end - catalog.group_start).reshape(len(DEPARTMENTS), len(STYLES), -1)
    cat_share = (sizes > 0) * np.array([CATEGORIES[c][0] for c in CATEGORY_NAMES]) + 1e-12
    pq.write_table(_arrow(catalog.frame, ITEMS), table_path(out_dir, "items"))

    n_rows = n_purchases = 0
    inter_tmp = table_path(out_dir, "interactions").with_suffix(".parquet.tmp")
    users_tmp = table_path(out_dir, "users").with_suffix(".parquet.tmp")
    blocks = range(0, users, USER_BLOCK)
    with (
        pq.ParquetWriter(inter_tmp, INTERACTIONS) as inter_writer,
        pq.ParquetWriter(users_tmp, USERS) as user_writer,
    ):
        for b, first in enumerate(track(blocks, "synth users", unit="blocks", enabled=progress)):
            rng = np.random.default_rng([seed, 1, b])
            n = min(USER_BLOCK, users - first)
            inter, user_frame = _user_block(
                rng, first, n, catalog, cat_share, days, start, keep_types
            )
            inter_writer.write_table(_arrow(inter, INTERACTIONS))
            user_writer.write_table(_arrow(user_frame, USERS))
            n_rows += len(inter)
            n_purchases += int((inter["event_type"] == "purchase").sum())
    inter_tmp.replace(table_path(out_dir, "interactions"))
    users_tmp.replace(table_path(out_dir, "users"))
    log.info("wrote %d interactions for %d users and %d items", n_rows, users, items)
    return SynthSummary(users, items, n_rows, n_purchases, start, end, out_dir)
