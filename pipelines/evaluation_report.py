"""``report.html`` of ``recsys evaluate``: one self-contained page to show the results to people.

Everything comes from the result document (``evaluation.json``), so a saved file can be rendered
again without rerunning anything::

    python -m pipelines.evaluation_report var/reports/evaluation/evaluation.json

The page is a single file: CSS inline, plots drawn by matplotlib as SVG and embedded as
``data:`` images (crisp at any zoom, and each SVG keeps its own ids), nothing fetched. It is
written after every model of a run, so it must render partial and older documents: a section
whose data is absent says what is missing instead of failing (``evaluation.json`` files written
before the curve points and the popularity deciles existed still render, with the curves drawn
from the table's Ks).

No template engine: Jinja2 is only an indirect dependency here, and the page is a few small
sections that :func:`html.escape` and f-strings cover.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

SERVED = "served pipeline"
TRUTH = "test truth"
# Tableau 10, without its red: the served pipeline gets red (and a thicker line) in every plot.
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#b07aa1",
    "#76b7b2",
    "#edc948",
    "#9c755f",
    "#bab0ac",
    "#ff9da7",
    "#86bcb6",
)
SERVED_COLOR = "#e15759"
TRUTH_COLOR = "#3b3b3b"
SEGMENTS = {
    "cold_users": (
        "Cold users",
        "test users with at most {t} training interactions "
        "(those with none are ranked by popularity by every model)",
    ),
    "cold_items": (
        "Cold items",
        "truth restricted to items with at most {t} training "
        "interactions: can a model recommend what few people bought?",
    ),
}


# --------------------------------------------------------------------------- shared helpers
def rows(result: dict[str, Any]) -> dict[str, Any]:
    """The peers, then the served pipeline when it was evaluated (or failed: it then has an
    ``error``); the order of every table and plot."""
    out = dict(result.get("models") or {})
    if result.get("served") is not None:
        out[SERVED] = result["served"]
    return out


def metric_columns(ks: Sequence[int]) -> list[str]:
    """The main table's metric columns: Recall at each K of the protocol, then the top-10 ones."""
    cols = [f"recall@{k}" for k in ks] + ["ndcg@10", "map@12", "hit@10", "coverage@10"]
    return list(dict.fromkeys(cols))


def curve_of(segment: dict[str, Any], ks: Sequence[int]) -> tuple[dict[str, list], bool]:
    """A segment's ``curve`` (K, Recall@K, NDCG@K), or the points its flat ``recall@K`` keys
    give (older documents); the flag says whether the full curve was recorded."""
    if isinstance(segment.get("curve"), dict):
        return segment["curve"], True
    points = [k for k in ks if f"recall@{k}" in segment]
    return {
        "k": points,
        "recall": [segment[f"recall@{k}"] for k in points],
        "ndcg": [segment.get(f"ndcg@{k}", math.nan) for k in points],
    }, False


def _colors(names: Sequence[str]) -> dict[str, str]:
    """A stable colour per row: the same model has the same colour in every plot."""
    peers = [n for n in names if n != SERVED]
    out = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(peers)}
    return out | {SERVED: SERVED_COLOR, TRUTH: TRUTH_COLOR}


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.{digits}f}%"


def _e(value: Any) -> str:
    return html.escape(str(value))


def _value(value: Any) -> str:
    """A hyper-parameter as written in a grid: 0.05, 20, 400 (not 0.0500, 20.0000)."""
    if isinstance(value, float) and not isinstance(value, bool):
        return f"{value:g}"
    return _fmt(value)


def _params(params: Any) -> str:
    if not params:
        return '<span class="muted">–</span>'
    if isinstance(params, dict):
        return " ".join(
            f'<span class="chip">{_e(k)}={_e(_value(v))}</span>' for k, v in params.items()
        )
    return _e(params)


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


# --------------------------------------------------------------------------- plots
def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


STYLE = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.labelcolor": "#333333",
    "axes.edgecolor": "#999999",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e6e6e6",
    "grid.linewidth": 0.8,
    "xtick.color": "#555555",
    "ytick.color": "#555555",
    "legend.frameon": False,
    # text as paths: the same look in every browser, no font lookup inside an <img>
    "svg.fonttype": "path",
    # fixed ids: regenerating a report from the same JSON gives the same bytes
    "svg.hashsalt": "recsys-evaluation",
}


def _figure_uri(fig: Any) -> str:
    """The figure as an SVG ``data:`` URI (then closed). Saved under :data:`STYLE`: the SVG
    settings (text as paths, fixed id salt) are read when saving, not when drawing."""
    plt = _pyplot()
    buf = io.BytesIO()
    with plt.rc_context(STYLE):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return f"data:image/svg+xml;base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def _curves_figure(result: dict[str, Any], metrics: Sequence[str] = ("recall", "ndcg")) -> Any:
    """Recall@K and NDCG@K of every row (log K): where each model's hits sit in the list."""
    plt = _pyplot()
    ks = result["protocol"].get("ks", [10, 20, 100])
    table = {n: m for n, m in rows(result).items() if "overall" in m}
    colors = _colors(list(rows(result)))  # the same colour per model in every plot
    labels = {"recall": "Recall@K", "ndcg": "NDCG@K"}
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.6), squeeze=False)
        all_k: set[int] = set()
        for ax, metric in zip(axes[0], metrics, strict=True):
            for name, m in table.items():
                curve, _ = curve_of(m["overall"], ks)
                served = name == SERVED
                ax.plot(
                    curve["k"],
                    curve[metric],
                    marker="o",
                    markersize=3.5 if served else 3,
                    linewidth=2.4 if served else 1.5,
                    color=colors[name],
                    label=name,
                    zorder=3 if served else 2,
                )
                all_k |= set(curve["k"])
            ax.set_xscale("log")
            ax.set_xticks(sorted(all_k))
            ax.set_xticklabels([str(k) for k in sorted(all_k)])
            ax.minorticks_off()
            ax.set(xlabel="K (list length)", title=labels[metric])
            ax.set_ylim(bottom=0)
        handles, names = axes[0][0].get_legend_handles_labels()
        if len(metrics) == 1:  # one panel (recall_at_k.png): the legend beside it
            axes[0][0].legend(handles, names, loc="center left", bbox_to_anchor=(1.02, 0.5))
            fig.tight_layout()
        else:  # side by side: one shared legend below both
            fig.legend(handles, names, loc="lower center", ncol=min(len(names), 7),
                       bbox_to_anchor=(0.5, -0.02))  # fmt: skip
            fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def _coverage_figure(result: dict[str, Any]) -> Any | None:
    """Catalogue coverage@10 per row: popularity scores well while showing a handful of items."""
    plt = _pyplot()
    table = {
        n: m["overall"]["coverage@10"]
        for n, m in rows(result).items()
        if "coverage@10" in (m.get("overall") or {})
    }
    if not table:
        return None
    colors = _colors(list(rows(result)))  # the same colour per model in every plot
    names = list(table)[::-1]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.6, 0.42 * len(names) + 1.0))
        bars = ax.barh(
            names, [100 * table[n] for n in names], color=[colors[n] for n in names], height=0.62
        )
        for bar, name in zip(bars, names, strict=True):
            ax.text(
                bar.get_width() + 1.0,
                bar.get_y() + bar.get_height() / 2,
                _pct(table[name]),
                va="center",
                fontsize=8,
                color="#333333",
            )
        ax.set_xlim(0, min(100, max(100 * max(table.values()) * 1.25, 5)))
        ax.set(xlabel="% of the catalogue in some user's top 10", title="Coverage@10")
        ax.grid(axis="y", visible=False)
        fig.tight_layout()
    return fig


def _deciles_figure(result: dict[str, Any]) -> Any | None:
    """100%-stacked bars: the share of each row's top 10 in each training-popularity decile,
    with the test truth on top as the reference of what users actually bought."""
    plt = _pyplot()
    table = {
        n: m["popularity_deciles"]
        for n, m in rows(result).items()
        if isinstance(m.get("popularity_deciles"), list)
    }
    truth = (result.get("popularity") or {}).get("truth")
    if not table:
        return None
    if isinstance(truth, list):
        table = {TRUTH: truth, **table}
    names = list(table)[::-1]
    with plt.rc_context(STYLE):
        cmap = plt.get_cmap("Blues")
        shades = [cmap(0.12 + 0.85 * d / 9) for d in range(10)]
        fig, ax = plt.subplots(figsize=(7.4, 0.42 * len(names) + 1.5))
        left = [0.0] * len(names)
        for d in range(10):
            widths = [100 * table[n][d] for n in names]
            ax.barh(
                names,
                widths,
                left=left,
                color=shades[d],
                height=0.62,
                edgecolor="white",
                linewidth=0.6,
                label=f"D{d + 1}",
            )
            for y, (x0, w) in enumerate(zip(left, widths, strict=True)):
                if w >= 7:
                    ax.text(
                        x0 + w / 2,
                        y,
                        f"{w:.0f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if d >= 5 else "#1f2d3d",
                    )
            left = [a + b for a, b in zip(left, widths, strict=True)]
        ax.set_xlim(0, 100)
        ax.set(
            xlabel="% of top-10 recommendations (truth: of test purchases)",
            title="Popularity bias: top 10 by training-popularity decile",
        )
        ax.grid(visible=False)
        for label in ax.get_yticklabels():
            if label.get_text() == TRUTH:
                label.set_fontweight("bold")
        ax.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            borderaxespad=4.2,  # in font sizes: below the tick labels and x label, any height
            ncol=10,
            handlelength=1.2,
            columnspacing=0.8,
            title="D1 = least popular tenth of the catalogue … D10 = most popular tenth",
            title_fontsize=8,
            fontsize=8,
        )
        fig.tight_layout()
    return fig


def _segment_figure(result: dict[str, Any], segment: str) -> Any | None:
    """Recall@10 and NDCG@10 of each row on one segment, as grouped horizontal bars."""
    plt = _pyplot()
    table = {n: m[segment] for n, m in rows(result).items() if m.get(segment)}
    if not table:
        return None
    colors = _colors(list(rows(result)))
    names = list(table)[::-1]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(5.6, 0.36 * len(names) + 1.1), sharey=True)
        for ax, metric in zip(axes, ("recall@10", "ndcg@10"), strict=True):
            values = [table[n].get(metric, math.nan) for n in names]
            ax.barh(names, values, color=[colors.get(n, TRUTH_COLOR) for n in names], height=0.62)
            finite = [v for v in values if not math.isnan(v)]
            top = max(finite) if finite else 0.0
            for y, v in enumerate(values):
                if not math.isnan(v):
                    ax.text(v + top * 0.03, y, f"{v:.3f}", va="center", fontsize=7.5)
            ax.set_xlim(0, top * 1.35 or 1.0)
            ax.set_title({"recall@10": "Recall@10", "ndcg@10": "NDCG@10"}[metric])
            ax.grid(axis="y", visible=False)
            ax.tick_params(axis="x", labelsize=7.5)
        fig.tight_layout()
    return fig


def recall_png(path: Path, result: dict[str, Any]) -> bool:
    """``recall_at_k.png`` (the Markdown report's plot): the Recall@K panel of the HTML report.
    False without matplotlib."""
    if _pyplot() is None or not any("overall" in m for m in rows(result).values()):
        return False
    fig = _curves_figure(result, metrics=("recall",))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return True


def _img(fig: Any | None, alt: str, cls: str = "plot") -> str:
    if fig is None:
        return ""
    return f'<img class="{cls}" alt="{_e(alt)}" src="{_figure_uri(fig)}">'


# --------------------------------------------------------------------------- sections
def _header(result: dict[str, Any]) -> str:
    p, d = result.get("protocol") or {}, result.get("dataset") or {}
    created = result.get("created_at", "")
    try:
        created = datetime.fromisoformat(created).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError):
        pass
    split = p.get("split", "?")
    where = f"cutoff {p['cutoff']}" if p.get("cutoff") else (p.get("holdout") or "")
    events = p.get("events")
    events = ", ".join(events) if isinstance(events, list) else events
    cards = [
        ("users evaluated", _fmt(d.get("eval_users"))),
        ("without training history", _fmt(d.get("cold_test_users"))),
        ("training users × items", f"{_fmt(d.get('train_users'))} × {_fmt(d.get('train_items'))}"),
        ("training pairs", _fmt(d.get("train_nnz", d.get("train_rows")))),
        ("test pairs scored", _fmt(d.get("eval_pairs"))),
        ("run time", f"{_fmt(result.get('seconds'), 0)} s" if "seconds" in result else "–"),
    ]
    card_html = "".join(
        f'<div class="card"><div class="v">{_e(v)}</div><div class="k">{_e(k)}</div></div>'
        for k, v in cards
    )
    return (
        '<header><div class="eyebrow">recsys evaluate · offline evaluation</div>'
        "<h1>Served pipeline vs tuned peers</h1>"
        f'<p class="sub"><b>{_e(split)}</b> split {_e(where)} · events: {_e(events)} · '
        f"generated {_e(created)}</p>"
        f'<div class="cards">{card_html}</div></header>'
    )


def _highlights(result: dict[str, Any]) -> str:
    """Three sentences a reader takes away: best peer, the served pipeline against it, bias."""
    table = {n: m for n, m in rows(result).items() if "overall" in m}
    peers = {n: m for n, m in table.items() if n != SERVED}
    items: list[str] = []
    if peers:
        best = max(peers, key=lambda n: peers[n]["overall"].get("recall@10", -1.0))
        o = peers[best]["overall"]
        items.append(
            f"Best peer on Recall@10: <b>{_e(best)}</b> {_fmt(o.get('recall@10'))} "
            f"(NDCG@10 {_fmt(o.get('ndcg@10'))})."
        )
        if SERVED in table:
            s = table[SERVED]["overall"]
            ratio = [
                f"{_e(label)} {_fmt(s.get(key))} "
                f"(<b>{s.get(key, 0) / max(o.get(key, 0), 1e-12):.2f}×</b> {_e(best)})"
                for key, label in (("recall@10", "Recall@10"), ("ndcg@10", "NDCG@10"))
                if key in s
            ]
            items.append("Served pipeline: " + ", ".join(ratio) + ".")
    served = result.get("served") or {}
    if served.get("error"):
        items.append(f"Served pipeline not scored: {_e(served['error'])}")
    truth = (result.get("popularity") or {}).get("truth")
    biased = {
        n: m["popularity_deciles"][-1]
        for n, m in table.items()
        if isinstance(m.get("popularity_deciles"), list)
    }
    if biased and isinstance(truth, list):
        most = max(biased, key=lambda n: biased[n])
        items.append(
            f"Most popularity-biased: <b>{_e(most)}</b>, {_pct(biased[most])} of its top "
            f"10 in the most popular tenth of the catalogue (test purchases: "
            f"{_pct(truth[-1])})."
        )
    if not items:
        return ""
    return (
        '<section class="highlights"><ul>'
        + "".join(f"<li>{i}</li>" for i in items)
        + ("</ul></section>")
    )


def _metrics_section(result: dict[str, Any]) -> str:
    ks = result.get("protocol", {}).get("ks", [10, 20, 100])
    columns = metric_columns(ks)
    table = rows(result)
    ok = {n: m for n, m in table.items() if "overall" in m}
    best = {
        c: max((m["overall"].get(c, -math.inf) for m in ok.values()), default=None)
        for c in columns
        if c != "coverage@10"
    }
    head = "".join(f"<th class='num'>{_e(c)}</th>" for c in columns)
    body = []
    for name, m in table.items():
        cls = ' class="served"' if name == SERVED else ""
        if "overall" not in m:
            body.append(
                f"<tr{cls}><td class='name'>{_e(name)}</td><td colspan="
                f"'{len(columns) + 3}' class='error'>{_e(m.get('error', 'failed'))}"
                "</td></tr>"
            )
            continue
        cells = []
        for c in columns:
            v = m["overall"].get(c)
            text = _pct(v) if c == "coverage@10" and v is not None else _fmt(v)
            mark = " best" if v is not None and best.get(c) is not None and v == best[c] else ""
            cells.append(f"<td class='num{mark}'>{text}</td>")
        params = m.get("params") if name != SERVED else {"run": m.get("run", "?")}
        fit = _fmt(m.get("fit_seconds"), 1) if "fit_seconds" in m else "–"
        body.append(
            f"<tr{cls}><td class='name'>{_e(name)}</td>{''.join(cells)}"
            f"<td class='num'>{_fmt(m['overall'].get('users'))}</td>"
            f"<td>{_params(params)}</td><td class='num'>{fit}</td></tr>"
        )
    notes = ""
    if result.get("served") is None:
        notes = _note(
            "The served pipeline is not in this file: it is scored after the peers "
            "(a partial report written during the run), or was not requested."
        )
    return (
        '<section><h2>Metrics</h2><p class="lead">Every model ranks the same users; the truth '
        "excludes each user's training items. Bold: the best of the column (coverage is not "
        f"a goal in itself).</p>{notes}<div class='scroll'><table><thead><tr><th>model</th>"
        f"{head}<th class='num'>users</th><th>parameters</th><th class='num'>fit s</th></tr>"
        f"</thead><tbody>{''.join(body)}</tbody></table></div></section>"
    )


def _served_section(result: dict[str, Any]) -> str:
    served = result.get("served")
    if served is None:
        return ""
    if "overall" not in served:
        return (
            '<section><h2>Served pipeline</h2><p class="error-box">Not scored: '
            f"{_e(served.get('error', 'unknown error'))}</p></section>"
        )
    facts = [
        ("run", served.get("run")),
        ("user features as of", served.get("as_of")),
        ("trained on", served.get("trained_on")),
        (
            "latency",
            f"{served['ms_per_user']:.2f} ms per user" if "ms_per_user" in served else None,
        ),
    ]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts if v)
    alone = served.get("sources_alone") or {}
    share = served.get("top10_source_share") or {}
    config = ((served.get("ranking") or {}).get("sources")) or {}
    if alone:
        cols = ("recall@10", "ndcg@10", "recall@100", "coverage@10")
        cols = tuple(c for c in cols if any(c in o for o in alone.values()))
        best_ndcg = max(o.get("ndcg@10", 0.0) for o in alone.values())
        body = []
        for name, o in {**alone, "ranker + rules": served["overall"]}.items():
            final = name == "ranker + rules"
            cells = "".join(
                f"<td class='num'>{_pct(o[c]) if c == 'coverage@10' else _fmt(o.get(c))}</td>"
                if c in o
                else "<td class='num'>–</td>"
                for c in cols
            )
            src_share = _pct(share[name]) if name in share else "–"
            body.append(
                f"<tr{' class=served' if final else ''}><td class='name'>{_e(name)}</td>"
                f"{cells}<td class='num'>{src_share}</td>"
                f"<td>{_params(config.get(name)) if not final else ''}</td></tr>"
            )
        lift = served["overall"].get("ndcg@10", 0.0) / max(best_ndcg, 1e-12)
        table = (
            "<h3>Each candidate source alone vs the ranker</h3><p class='lead'>Same users; a "
            "source alone ranks its own candidates by its own score. The ranker + rules reach "
            f"<b>{lift:.2f}×</b> the NDCG@10 of the best single source. <i>In top 10</i>: the "
            "share of the served top-10 slots each source put forward (an item can come "
            "from several sources).</p><table><thead><tr><th>source</th>"
            + "".join(f"<th class='num'>{_e(c)}</th>" for c in cols)
            + "<th class='num'>in top 10</th><th>configuration</th></tr></thead><tbody>"
            + "".join(body)
            + "</tbody></table>"
        )
    else:
        table = _note("This file has no per-source scores (<code>sources_alone</code>).")
    return (
        "<section><h2>Served pipeline</h2><p class='lead'>The current run through the API's own "
        "code: its candidate sources, LightGBM ranker, vector search and business rules, with "
        f"the Feast user rows as of the split's cutoff.</p><dl class='facts'>{dl}</dl>{table}"
        "</section>"
    )


def _curves_section(result: dict[str, Any], plt: Any) -> str:
    table = {n: m for n, m in rows(result).items() if "overall" in m}
    if not table:
        return ""
    ks = result.get("protocol", {}).get("ks", [10, 20, 100])
    full = [curve_of(m["overall"], ks)[1] for m in table.values()]
    notes = ""
    if not all(full):
        notes = _note(
            "Some rows have no <code>curve</code> in this evaluation.json (written "
            "before curve points were recorded): their curves use only the table's "
            f"K = {', '.join(map(str, ks))}."
        )
    plot = _img(_curves_figure(result), "Recall@K and NDCG@K per model") if plt else ""
    return (
        "<section><h2>Recall@K and NDCG@K</h2><p class='lead'>How the hits accumulate down the "
        "list (log-scaled K). Recall@K divides the hits by min(K, relevant items); NDCG@K uses "
        f"binary relevance.</p>{notes}{plot}</section>"
    )


def _bias_section(result: dict[str, Any], plt: Any) -> str:
    table = {n: m for n, m in rows(result).items() if "overall" in m}
    if not table:
        return ""
    pop = result.get("popularity") or {}
    has_deciles = any(isinstance(m.get("popularity_deciles"), list) for m in table.values())
    notes = []
    if not has_deciles:
        notes.append(
            _note(
                "No popularity deciles in this evaluation.json (written before they "
                "were recorded): rerun <code>recsys evaluate</code> for that plot."
            )
        )
    elif not isinstance(pop.get("truth"), list):
        notes.append(_note("No test-truth reference row (<code>popularity.truth</code>)."))
    plots = ""
    if plt:
        coverage = _img(_coverage_figure(result), "Catalogue coverage at 10 per model")
        deciles = _img(_deciles_figure(result), "Share of top-10 per popularity decile")
        plots = f"<div class='grid-cov'><div>{coverage}</div><div>{deciles}</div></div>"
    ranges = pop.get("item_count_range")
    range_text = ""
    if isinstance(ranges, list) and len(ranges) == 10:
        range_text = (
            " Training users per item in each decile: "
            + ", ".join(f"D{i + 1} {lo}–{hi}" for i, (lo, hi) in enumerate(ranges))
            + "."
        )
    return (
        "<section><h2>Coverage and popularity bias</h2><p class='lead'>Coverage@10: the share "
        "of the catalogue that appears in at least one evaluated user's top 10. Deciles: the "
        "catalogue cut into ten equal groups of items by training popularity (D1 the long tail, "
        "D10 the head); each bar is the share of a model's top-10 slots in each group, the "
        "<b>test truth</b> bar what users actually bought. A uniform recommender would put 10% "
        f"in each.{_e(range_text)}</p>{''.join(notes)}{plots}</section>"
    )


def _segment_table(result: dict[str, Any], segment: str) -> str:
    body = []
    for name, m in rows(result).items():
        s = m.get(segment)
        if not s:
            continue
        cls = " class=served" if name == SERVED else ""
        over = (m.get("overall") or {}).get("recall@10")
        rel = f"{s.get('recall@10', 0) / over:.2f}×" if over else "–"
        body.append(
            f"<tr{cls}><td class='name'>{_e(name)}</td>"
            f"<td class='num'>{_fmt(s.get('recall@10'))}</td>"
            f"<td class='num'>{_fmt(s.get('ndcg@10'))}</td>"
            f"<td class='num'>{_fmt(s.get('hit@10'))}</td>"
            f"<td class='num'>{rel}</td></tr>"
        )
    if not body:
        return ""
    return (
        "<table><thead><tr><th>model</th><th class='num'>recall@10</th><th class='num'>"
        "ndcg@10</th><th class='num'>hit@10</th><th class='num'>vs overall</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _cold_section(result: dict[str, Any], plt: Any) -> str:
    threshold = result.get("protocol", {}).get("cold_threshold", 2)
    d = result.get("dataset") or {}
    users_key = {"cold_users": "cold_user_segment_users", "cold_items": "cold_item_segment_users"}
    panels = []
    for segment, (title, text) in SEGMENTS.items():
        table = _segment_table(result, segment)
        n = next(
            (m[segment].get("users") for m in rows(result).values() if m.get(segment)),
            d.get(users_key[segment]),
        )
        if table:
            plot = _img(_segment_figure(result, segment), f"{title} recall and NDCG") if plt else ""
            inner = plot + table
        else:
            inner = _note("No user in this segment (or no model scored yet).")
        panels.append(
            f"<div class='panel'><h3>{_e(title)} <span class='badge'>{_fmt(n)} users"
            f"</span></h3><p class='lead'>{_e(text.format(t=threshold))}</p>{inner}"
            "</div>"
        )
    return "<section><h2>Cold start</h2><div class='grid-2'>" + "".join(panels) + "</div></section>"


def _tuning_section(result: dict[str, Any]) -> str:
    """A summary row per model (chosen parameters, trials, best validation score), then the
    trials of each tuned model, best first, the chosen one marked."""
    tuning = (result.get("protocol") or {}).get("tuning") or {}
    metric = tuning.get("metric", "recall@10")
    grids = tuning.get("grids") or {}
    summary: list[str] = []
    panels: list[tuple[bool, str]] = []  # (wide, html): the narrow ones pair up first
    for name, m in (result.get("models") or {}).items():
        trials = [t for t in m.get("tuning") or [] if isinstance(t.get("params"), dict)]
        chosen = m.get("params")
        best = max((t.get(metric, math.nan) for t in trials), default=None)
        if trials:
            status = f"{len(trials)} trials"
        elif name in grids:
            status = "default kept (no trial ran)" if tuning.get("enabled", True) else "default"
        else:
            status = "no grid"
        note = f"<div class='muted'>{_e(m['tuning_note'])}</div>" if m.get("tuning_note") else ""
        summary.append(
            f"<tr><td class='name'>{_e(name)}</td><td>{_params(chosen)}{note}</td>"
            f"<td>{_e(status)}</td><td class='num'>{_fmt(best)}</td></tr>"
        )
        if not trials:
            continue
        keys = list(dict.fromkeys(k for t in trials for k in t["params"]))
        top = max((t.get(metric, 0.0) for t in trials), default=0.0) or 1.0
        body = []
        for t in sorted(trials, key=lambda t: -t.get(metric, -math.inf)):
            mark = t["params"] == chosen
            value = t.get(metric, math.nan)
            # the data bar fills at most 60% of its cell, leaving the number legible
            bar = 0.0 if math.isnan(value) else max(0.0, min(60.0, 60 * value / top))
            body.append(
                f"<tr{' class=chosen' if mark else ''}>"
                + "".join(f"<td class='num'>{_e(_value(t['params'].get(k)))}</td>" for k in keys)
                + f"<td class='num bar-cell'><span class='bar' style='width:{bar:.0f}%'></span>"
                f"<span class='bar-v'>{_fmt(value)}</span></td>"
                f"<td class='num'>{_fmt(t.get('seconds'), 1)}</td>"
                f"<td>{'<span class=tag>chosen</span>' if mark else ''}</td></tr>"
            )
        wide = len(keys) > 2
        panels.append(
            (
                wide,
                f"<div class='panel{' wide' if wide else ''}'><h3>{_e(name)} "
                f"<span class='badge'>{len(trials)} trials</span></h3>"
                "<div class='scroll tall'><table><thead><tr>"
                + "".join(f"<th class='num'>{_e(k)}</th>" for k in keys)
                + f"<th class='num'>validation {_e(metric)}</th><th class='num'>fit s</th><th></th>"
                f"</tr></thead><tbody>{''.join(body)}</tbody></table></div></div>",
            )
        )
    if not summary:
        return ""
    if tuning.get("enabled", True):
        lead = (
            f"Chosen by validation {_e(metric)} on a slice of the training data "
            f"({_e(tuning.get('selection', ''))}; {_fmt(tuning.get('validation_users'))} "
            "validation users); the test set is scored once, with the chosen parameters."
        )
    else:
        lead = "Tuning was off (<code>--no-tune</code>): every model used its default parameters."
    return (
        f"<section><h2>Hyper-parameters</h2><p class='lead'>{lead}</p><table class='summary'>"
        f"<thead><tr><th>model</th><th>chosen parameters</th><th>tuning</th><th class='num'>"
        f"best validation {_e(metric)}</th></tr></thead><tbody>{''.join(summary)}</tbody>"
        f"</table><div class='grid-2'>{''.join(h for _, h in sorted(panels, key=lambda p: p[0]))}"
        "</div></section>"
    )


def _protocol_section(result: dict[str, Any]) -> str:
    p = dict(result.get("protocol") or {})
    p.pop("tuning", None)
    d = result.get("dataset") or {}
    dl = "".join(
        f"<dt>{_e(k)}</dt><dd>{_e(', '.join(map(str, v)) if isinstance(v, list) else _fmt(v))}</dd>"
        for k, v in p.items()
    )
    ds = "".join(
        f"<dt>{_e(k)}</dt><dd>{_e(_fmt(v))}</dd>"
        for k, v in d.items()
        if not isinstance(v, dict | list)
    )
    return (
        "<section><h2>Protocol and data</h2><div class='grid-2'><div class='panel small'>"
        f"<h3>Protocol</h3><dl class='facts'>{dl}</dl></div><div class='panel small'>"
        f"<h3>Data</h3><dl class='facts'>{ds}</dl></div></div></section>"
    )


CSS = """
:root{--ink:#1f2933;--muted:#6b7785;--line:#e3e7ec;--bg:#f6f8fa;--accent:#e15759;
--blue:#4e79a7}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.5 -apple-system,
BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,"DejaVu Sans",sans-serif}
main{max-width:1180px;margin:0 auto;padding:28px 28px 60px}
header{background:#fff;border:1px solid var(--line);border-radius:10px;padding:22px 26px;
margin-bottom:18px}
.eyebrow{text-transform:uppercase;letter-spacing:.08em;font-size:11px;color:var(--muted)}
h1{margin:4px 0 2px;font-size:24px}
h2{font-size:18px;margin:0 0 6px}
h3{font-size:14px;margin:0 0 6px}
.sub{margin:0 0 14px;color:var(--muted)}
.cards{display:grid;grid-template-columns:repeat(6,1fr);gap:10px}
.card{background:var(--bg);border-radius:8px;padding:10px 12px}
.card .v{font-size:18px;font-weight:600;font-variant-numeric:tabular-nums}
.card .k{font-size:11.5px;color:var(--muted)}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:20px 24px;
margin-bottom:18px}
.highlights{border-left:4px solid var(--accent)}
.highlights ul{margin:0;padding-left:18px}
.highlights li{margin:3px 0}
.lead{color:var(--muted);margin:0 0 12px;font-size:13px}
.note{background:#fff8e6;border:1px solid #f3dfa6;border-radius:6px;padding:7px 11px;
font-size:12.5px;color:#6b5200;margin:0 0 12px}
.error-box{background:#fdecec;border:1px solid #f5c2c2;border-radius:6px;padding:9px 12px}
table{border-collapse:collapse;width:100%;font-size:12.5px}
th{font-weight:600;text-align:left;color:var(--muted);border-bottom:2px solid var(--line);
padding:6px 8px;white-space:nowrap}
td{padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:middle}
tbody tr:hover{background:#fafbfc}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.best{font-weight:700;color:#0b5394}
td.name{font-weight:600;white-space:nowrap}
tr.served td{background:#fdf1f1}
tr.served td.name{color:var(--accent)}
tr.chosen td{background:#eef5ee}
td.error{color:#a61b1b}
.chip{display:inline-block;background:var(--bg);border:1px solid var(--line);border-radius:4px;
padding:0 5px;margin:1px 2px 1px 0;font-size:11.5px;font-family:ui-monospace,SFMono-Regular,
Menlo,Consolas,monospace;white-space:nowrap}
.badge{font-weight:500;font-size:11px;color:var(--muted);background:var(--bg);
border-radius:10px;padding:1px 8px;margin-left:4px}
.tag{background:#59a14f;color:#fff;border-radius:4px;padding:1px 6px;font-size:11px}
.muted{color:var(--muted)}
.scroll{overflow-x:auto}
.scroll.tall{max-height:460px;overflow-y:auto}
.bar-cell{position:relative;min-width:120px}
.bar{position:absolute;left:6px;top:6px;bottom:6px;background:#dbe7f3;border-radius:2px}
.bar-v{position:relative}
img.plot{display:block;width:100%;height:auto;margin:6px 0 10px}
.grid-2{display:grid;grid-template-columns:1fr 1fr;gap:16px}
.grid-cov{display:grid;grid-template-columns:38% 62%;gap:12px;align-items:start}
.panel{border:1px solid var(--line);border-radius:8px;padding:14px 16px;min-width:0}
.panel.wide{grid-column:1/-1}
table.summary{margin-bottom:16px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px;margin:0 0 12px;
font-size:12.5px}
dl.facts dt{color:var(--muted)}
dl.facts dd{margin:0;overflow-wrap:anywhere}
code{font-size:12px;background:var(--bg);padding:0 4px;border-radius:3px}
footer{color:var(--muted);font-size:12px;text-align:center}
@media (max-width:900px){.cards{grid-template-columns:repeat(3,1fr)}
.grid-2,.grid-cov{grid-template-columns:1fr}}
"""


def render_html(result: dict[str, Any]) -> str:
    """The whole page as a string (see the module docstring)."""
    plt = _pyplot()
    sections = [
        _header(result),
        _highlights(result),
        _metrics_section(result),
        _served_section(result),
        _curves_section(result, plt),
        _bias_section(result, plt),
        _cold_section(result, plt),
        _tuning_section(result),
        _protocol_section(result),
    ]
    if plt is None:
        sections.insert(2, _note("matplotlib is not installed: the report has no plots."))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>Offline evaluation · recsys</title><style>{CSS}</style></head><body><main>"
        + "\n".join(s for s in sections if s)
        + "<footer>Written by <code>recsys evaluate</code> from <code>evaluation.json</code> "
        "(regenerate: <code>python -m pipelines.evaluation_report evaluation.json</code>)."
        "</footer></main></body></html>\n"
    )


def write_html_report(out_dir: Path, result: dict[str, Any]) -> Path:
    """Write ``out_dir/report.html`` from a result document and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    path.write_text(render_html(result), encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> Path:
    """Regenerate ``report.html`` from a saved ``evaluation.json`` (next to it by default)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("json", type=Path, help="an evaluation.json written by recsys evaluate")
    parser.add_argument("--out", type=Path, help="output folder (default: the JSON's folder)")
    args = parser.parse_args(argv)
    result = json.loads(args.json.read_text())
    path = write_html_report(args.out or args.json.parent, result)
    print(path)
    return path


if __name__ == "__main__":
    main()
