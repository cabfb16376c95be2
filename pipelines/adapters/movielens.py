"""``movielens``: the GroupLens MovieLens 100k and 1M layouts, detected by the files present.

MovieLens has explicit ratings, not shopping events. The platform's models and evaluation work
on purchases (and views as weaker signal), so a rating is kept as ``value`` and its level picks
the event: **rating >= 4 -> 'purchase'** (a movie the user liked, what a recommender should
find), **rating <= 3 -> 'view'** (seen, not liked). Both releases are latin-1 files without
quoting; 1M uses the two-character separator ``::``, which DuckDB reads directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.adapters.base import (
    DatasetAdapter,
    DatasetImportError,
    TableWriter,
    canonical_select,
    require_dir,
)
from recsys.core.sql import sql_str

LIKED_RATING = 4
GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
# The ratings file that identifies a release -> (release, its other files, field separator).
RELEASES = {
    "u.data": ("100k", ("u.item", "u.user"), "\t"),
    "ratings.dat": ("1M", ("movies.dat", "users.dat"), "::"),
}


def _read(path: Path, delim: str, columns: list[str]) -> str:
    """An exact, unsniffed read: every column text, then cast (and checked) in SQL."""
    spec = ", ".join(f"{sql_str(c)}: 'VARCHAR'" for c in columns)
    return (
        f"read_csv({sql_str(path)}, delim={sql_str(delim)}, header=false, quote='', escape='', "
        f"encoding='latin-1', auto_detect=false, columns={{{spec}}})"
    )


class MovieLensAdapter(DatasetAdapter):
    """MovieLens 100k (``u.data``, ``u.item``, ``u.user``) or 1M (``*.dat``)."""

    name = "movielens"
    description = "MovieLens 100k (u.data ...) or 1M (ratings.dat ...)"
    options = frozenset({"path"})

    def write(self, writer: TableWriter, **options: Any) -> None:
        folder = require_dir(options.get("path"), self.name, ("u.data", "or ratings.dat"))
        ratings = next((name for name in RELEASES if (folder / name).is_file()), None)
        if ratings is None:
            raise DatasetImportError(
                f"{folder}: neither u.data (MovieLens 100k) nor ratings.dat (MovieLens 1M) found; "
                "pass the unzipped ml-100k or ml-1m folder (newer releases with ratings.csv "
                "import with the 'generic' format)"
            )
        release, others, delim = RELEASES[ratings]
        for name in others:
            if not (folder / name).is_file():
                raise DatasetImportError(f"{folder}: MovieLens {release} file {name} not found")
        self._write_ratings(writer, folder / ratings, delim)
        (self._write_100k if release == "100k" else self._write_1m)(writer, folder)
        writer.note(
            f"value = the rating; event_type = 'purchase' for ratings >= {LIKED_RATING} "
            "(liked), 'view' below (seen, not liked); no prices or sessions"
        )

    # ------------------------------------------------------------------ ratings
    @staticmethod
    def _write_ratings(writer: TableWriter, path: Path, delim: str) -> None:
        relation = _read(path, delim, ["user_id", "item_id", "rating", "epoch"])
        rating = TableWriter.checked("TRY_CAST(rating AS DOUBLE)", "rating")
        stamp = TableWriter.checked("to_timestamp(TRY_CAST(epoch AS BIGINT))", "epoch")
        exprs = {
            "user_id": "user_id",
            "item_id": "item_id",
            "timestamp": stamp,
            "event_type": f"CASE WHEN {rating} >= {LIKED_RATING} THEN 'purchase' ELSE 'view' END",
            "value": rating,
        }
        fixes = {
            "rating": f"{path.name} ratings are numbers 1-5; the file looks damaged",
            "epoch": f"{path.name} timestamps are epoch seconds; the file looks damaged",
        }
        query = f"SELECT {canonical_select('interactions', exprs)} FROM {relation}"
        writer.write("interactions", query, source=path, fixes=fixes)

    # ------------------------------------------------------------------ 100k
    def _write_100k(self, writer: TableWriter, folder: Path) -> None:
        genres = self._genres_100k(writer, folder)
        flags = [f"g{k}" for k in range(len(genres))]
        base = ["item_id", "title", "release_date", "video_release_date", "imdb_url"]
        relation = _read(folder / "u.item", "|", base + flags)
        whens = [f"WHEN {f} = '1' THEN {sql_str(g)}" for f, g in zip(flags, genres, strict=True)]
        released = TableWriter.checked("try_strptime(release_date, '%d-%b-%Y')", "release_date")
        exprs = {
            "item_id": "item_id",
            "title": "title",
            "category": f"CASE {' '.join(whens)} END",  # the first genre flagged
            "launch_date": released,
        }
        listed = ", ".join(f"CASE {w} END" for w in whens)
        extras = {"genres": f"concat_ws('|', {listed})", "imdb_url": "imdb_url"}
        query = f"SELECT {canonical_select('items', exprs, extras)} FROM {relation}"
        fixes = {"release_date": "u.item release dates are DD-Mon-YYYY (01-Jan-1995)"}
        writer.write("items", query, source=folder / "u.item", fixes=fixes)

        relation = _read(folder / "u.user", "|", ["user_id", "age", "gender", "occupation", "zip"])
        exprs = {
            "user_id": "user_id",
            "age": TableWriter.checked("TRY_CAST(age AS INTEGER)", "age"),
            "gender": _GENDER,
        }
        extras = {"occupation": "occupation", "zip_code": "zip"}
        query = f"SELECT {canonical_select('users', exprs, extras)} FROM {relation}"
        writer.write("users", query, source=folder / "u.user")
        writer.note("detected MovieLens 100k (u.data); category = the first of a movie's genres")

    @staticmethod
    def _genres_100k(writer: TableWriter, folder: Path) -> tuple[str, ...]:
        """Genre names in flag order, from ``u.genre`` when present."""
        path = folder / "u.genre"
        if not path.is_file():
            return GENRES_100K
        rows = writer.con.execute(
            f"SELECT name FROM {_read(path, '|', ['name', 'idx'])} "
            "WHERE name IS NOT NULL ORDER BY CAST(idx AS INTEGER)"
        ).fetchall()
        return tuple(str(r[0]) for r in rows) or GENRES_100K

    # ------------------------------------------------------------------ 1M
    def _write_1m(self, writer: TableWriter, folder: Path) -> None:
        relation = _read(folder / "movies.dat", "::", ["item_id", "title", "genres"])
        exprs = {"item_id": "item_id", "title": "title", "category": "split_part(genres, '|', 1)"}
        query = f"SELECT {canonical_select('items', exprs, {'genres': 'genres'})} FROM {relation}"
        writer.write("items", query, source=folder / "movies.dat")

        columns = ["user_id", "gender", "age_group", "occupation", "zip"]
        relation = _read(folder / "users.dat", "::", columns)
        code = TableWriter.checked("TRY_CAST(age_group AS INTEGER)", "age_group")
        exprs = {
            "user_id": "user_id",
            # Age is a bucket code; its lower bound is an age, except code 1 ("under 18").
            "age": f"CASE WHEN {code} = 1 THEN NULL ELSE {code} END",
            "gender": _GENDER,
        }
        extras = {c: f"CAST({c} AS INTEGER)" for c in ("age_group", "occupation")}
        extras["zip_code"] = "zip"
        query = f"SELECT {canonical_select('users', exprs, extras)} FROM {relation}"
        writer.write("users", query, source=folder / "users.dat")
        writer.note(
            "detected MovieLens 1M (ratings.dat); category = the first of a movie's genres; "
            "age = the lower bound of the user's age group, NULL for code 1 (under 18), "
            "the code is kept in age_group"
        )


_GENDER = "CASE gender WHEN 'M' THEN 'male' WHEN 'F' THEN 'female' ELSE gender END"
