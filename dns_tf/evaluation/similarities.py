"""Query-to-database similarities in the two shapes evaluation accepts, and one view over both.

The authors' protocols take ``{query_id: {database_id: score}}``; a model scoring a whole collection
produces a dense matrix ``[Q, N]``. ``SimilarityMatrix`` names the rows and columns of such a matrix,
and ``per_query_scores`` turns either shape into one ``QueryScores`` per query without building
millions of Python floats (FIVR-200K is 100 x 225,960 pairs).

Duplicate database ids in a matrix resolve the way filling a dict would: the id keeps the place of its
first column and the score of its last.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Collection, Mapping, Sequence, Union

import numpy as np


class SimilarityMatrix:
    """Scores of every query against every database video, with the ids of rows and columns.

    Args:
        scores: float [Q, N], higher is more similar.
        queries: [Q] query ids, one per row.
        database: [N] database ids, one per column.
    """

    def __init__(self, scores: np.ndarray, queries: Sequence[str], database: Sequence[str]):
        scores = np.asarray(scores)
        queries = [str(query) for query in queries]
        database = [str(video) for video in database]
        if scores.ndim != 2 or scores.shape != (len(queries), len(database)):
            raise ValueError(
                f"similarity matrix has shape {scores.shape}; expected [queries, database] = "
                f"[{len(queries)}, {len(database)}]")
        if not np.issubdtype(scores.dtype, np.floating) and not np.issubdtype(scores.dtype, np.integer):
            raise ValueError(f"similarity matrix has dtype {scores.dtype}; expected numbers")
        if np.isnan(scores).any():
            raise ValueError("similarity matrix contains NaN; every pair needs a score")
        self.scores = scores
        self.queries = queries
        self.database = database

    @classmethod
    def from_npz(cls, path: str | os.PathLike) -> "SimilarityMatrix":
        """Reads an ``.npz`` with ``similarities`` [Q, N], ``queries`` [Q] and ``database`` [N]."""
        path = os.fspath(path)
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in ("similarities", "queries", "database") if key not in data.files]
            if missing:
                raise ValueError(
                    f"{path}: missing array(s) {', '.join(missing)}; expected 'similarities' "
                    f"[queries, database], 'queries' and 'database' (found {', '.join(data.files)})")
            try:
                return cls(data["similarities"], data["queries"].tolist(), data["database"].tolist())
            except ValueError as error:
                raise ValueError(f"{path}: {error}") from None


Similarities = Union[Mapping[str, Mapping[str, float]], SimilarityMatrix, np.ndarray]


class Candidates:
    """The database videos one or more queries were scored against, without duplicate ids.

    A matrix's queries all share one ``Candidates``, so a membership mask asked for with
    ``cache=True`` tests a large id set (FIVR-200K's database) only once for all of them.
    """

    def __init__(self, ids: Sequence[str]):
        ids = np.asarray(ids, dtype=object)
        _, first = np.unique(ids, return_index=True)
        if first.size == ids.size:
            self.ids = ids
            self.columns: np.ndarray | None = None
        else:
            # Like a dict filled column by column: first position, last score.
            last_of = {video: column for column, video in enumerate(ids)}
            first = np.sort(first)
            self.ids = ids[first]
            self.columns = np.fromiter((last_of[video] for video in self.ids), np.int64,
                                       count=first.size)
        self._positions: dict[str, int] | None = None
        self._mask_cache: dict[int, tuple[Collection[str], np.ndarray]] = {}

    def __len__(self) -> int:
        return self.ids.size

    @property
    def positions(self) -> dict[str, int]:
        """id -> index into ``ids``."""
        if self._positions is None:
            self._positions = {video: index for index, video in enumerate(self.ids)}
        return self._positions

    def mask(self, members: Collection[str], cache: bool = False) -> np.ndarray:
        """bool [len(self)]: which candidates are in ``members`` (a set, for large collections).

        With ``cache=True`` the mask is kept for the next call with the same ``members`` object.
        """
        cached = self._mask_cache.get(id(members))
        if cached is not None and cached[0] is members:
            return cached[1]
        if len(members) < len(self):
            mask = np.zeros(len(self), dtype=bool)
            positions = self.positions
            mask[[positions[video] for video in members if video in positions]] = True
        else:
            mask = np.fromiter((video in members for video in self.ids), bool, count=len(self))
        if cache:
            # Holding a reference keeps id(members) from being reused by another object.
            self._mask_cache[id(members)] = (members, mask)
        return mask


@dataclasses.dataclass(frozen=True)
class QueryScores:
    """One query's scores: ``scores[i]`` [M] belongs to ``candidates.ids[i]``."""

    candidates: Candidates
    scores: np.ndarray

    def ranking(self) -> np.ndarray:
        """int [M]: candidate indices, most similar first; ties keep the candidates' order."""
        return np.argsort(-self.scores, kind="stable")

    def score_of(self, video: str) -> float | None:
        position = self.candidates.positions.get(video)
        return None if position is None else float(self.scores[position])


def per_query_scores(similarities: Similarities, queries: Sequence[str],
                     database: Sequence[str]) -> dict[str, QueryScores]:
    """Views ``similarities`` as one ``QueryScores`` per query.

    Args:
        similarities: ``{query: {database_id: score}}``, a ``SimilarityMatrix``, or a plain array
            [len(queries), len(database)] whose rows and columns follow ``queries`` and ``database``.
        queries, database: the dataset's ids, naming a plain array's rows and columns.
    """
    if isinstance(similarities, np.ndarray):
        if similarities.shape != (len(queries), len(database)):
            raise ValueError(
                f"similarity matrix has shape {similarities.shape}; a plain array must follow the "
                f"dataset's order, [queries, database] = [{len(queries)}, {len(database)}] "
                "(wrap other orders in a SimilarityMatrix with their ids)")
        similarities = SimilarityMatrix(similarities, queries, database)
    if isinstance(similarities, SimilarityMatrix):
        candidates = Candidates(similarities.database)
        rows = similarities.scores
        if candidates.columns is not None:
            rows = rows[:, candidates.columns]
        return {query: QueryScores(candidates, row) for query, row in zip(similarities.queries, rows)}
    if not isinstance(similarities, Mapping):
        raise TypeError(
            "similarities must be a {query: {database_id: score}} dict, a SimilarityMatrix or a "
            f"[queries, database] array, got {type(similarities).__name__}")
    results = {}
    for query, scores_by_video in similarities.items():
        if not isinstance(scores_by_video, Mapping):
            raise TypeError(f"similarities[{query!r}] must map database ids to scores, "
                            f"got {type(scores_by_video).__name__}")
        scores = np.fromiter(scores_by_video.values(), np.float64, count=len(scores_by_video))
        if np.isnan(scores).any():
            raise ValueError(f"similarities[{query!r}] contains NaN scores")
        results[str(query)] = QueryScores(Candidates(list(map(str, scores_by_video))), scores)
    return results


def read_available_ids(path: str | os.PathLike, database: Sequence[str] | None = None) -> set[str]:
    """Reads which videos were available for a run (the subset evaluation's ``all_db``).

    Args:
        path: an ``.npz`` with ``available`` (bool [N]) and either its own ``database`` ids [N] or
            none, then aligned with ``database``; or a text file with one video id per line.
        database: [N] ids that a bare ``available`` mask follows (e.g. a ``SimilarityMatrix``'s).
    """
    path = os.fspath(path)
    if not path.endswith(".npz"):
        with open(path, "r", encoding="utf-8") as file:
            return {line.strip() for line in file if line.strip()}
    with np.load(path, allow_pickle=False) as data:
        if "available" not in data.files:
            raise ValueError(f"{path}: missing array 'available' (bool per database video); "
                             f"found {', '.join(data.files)}")
        mask = data["available"]
        ids = data["database"].tolist() if "database" in data.files else database
    if ids is None:
        raise ValueError(f"{path}: 'available' needs the database ids it follows; the file has no "
                         "'database' array")
    if mask.dtype != bool or mask.shape != (len(ids),):
        raise ValueError(f"{path}: 'available' must be bool [{len(ids)}] (one per database video), "
                         f"got {mask.dtype} {mask.shape}")
    return {str(video) for video, keep in zip(ids, mask) if keep}
