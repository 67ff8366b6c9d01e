"""Matched segments and their JSON files (the contract in /work/coord/segments-format.md).

A segment says that ``[query_start, query_end)`` seconds of the query appear as
``[target_start, target_end)`` seconds of the target, with a confidence ``score``. A file is a JSON
list of objects with the keys ``query``, ``target`` (video ids), the four times and, for
predictions, ``score``::

    [{"query": "q000", "target": "q000_ds1", "query_start": 2.0, "query_end": 6.5,
      "target_start": 10.0, "target_end": 14.5, "score": 0.83}, ...]
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Iterable, Mapping

TIME_KEYS = ("query_start", "query_end", "target_start", "target_end")
Pair = tuple[str, str]


class SegmentFormatError(ValueError):
    """A segments file does not follow the format; the message names the file and entry."""


@dataclasses.dataclass(frozen=True)
class Segment:
    """One matched segment, times in seconds."""

    query_start: float
    query_end: float
    target_start: float
    target_end: float
    score: float = 1.0

    def __iter__(self):
        """Unpacks as ``(query_start, query_end, target_start, target_end, score)``."""
        return iter(dataclasses.astuple(self))

    def as_dict(self, digits: int = 3) -> dict:
        return {key: round(float(value), digits)
                for key, value in dataclasses.asdict(self).items()}


def read_segments(path: str | os.PathLike, scored: bool = False) -> dict[Pair, list[Segment]]:
    """Reads a segments file into ``{(query, target): [Segment, ...]}``.

    Args:
        scored: predictions: every entry needs a ``score`` (ground truth scores 1).

    Raises:
        SegmentFormatError: naming the file, the entry and what was expected.
        OSError: the file cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as file:
            entries = json.load(file)
    except json.JSONDecodeError as error:
        raise SegmentFormatError(f"{path}: not JSON ({error})") from None
    if not isinstance(entries, list):
        raise SegmentFormatError(f"{path}: expected a JSON list of segments, got "
                                 f"{type(entries).__name__}")
    return group_segments(entries, str(path), scored)


def group_segments(entries: Iterable[Mapping], source: str = "segments",
                   scored: bool = False) -> dict[Pair, list[Segment]]:
    """Checks segment entries (dicts as in a file) and groups them by (query, target) pair."""
    pairs: dict[Pair, list[Segment]] = {}
    for number, entry in enumerate(entries):
        where = f"{source}: entry {number}"
        if not isinstance(entry, Mapping):
            raise SegmentFormatError(f"{where}: expected an object, got {type(entry).__name__}")
        keys = ("query", "target", *TIME_KEYS, *(("score",) if scored else ()))
        missing = [key for key in keys if key not in entry]
        if missing:
            raise SegmentFormatError(f"{where}: missing {', '.join(missing)}")
        for key in ("query", "target"):
            if not isinstance(entry[key], str):
                raise SegmentFormatError(f"{where}: '{key}' must be a video id string")
        values = {}
        for key in (*TIME_KEYS, "score"):
            value = entry.get(key, 1.0)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value)):
                raise SegmentFormatError(f"{where}: '{key}' must be a finite number, got {value!r}")
            values[key] = float(value)
        for axis in ("query", "target"):
            if not 0 <= values[f"{axis}_start"] < values[f"{axis}_end"]:
                raise SegmentFormatError(f"{where}: expected 0 <= {axis}_start < {axis}_end, got "
                                         f"{values[f'{axis}_start']}, {values[f'{axis}_end']}")
        pairs.setdefault((entry["query"], entry["target"]), []).append(Segment(**values))
    return pairs


def segment_entries(pairs: Mapping[Pair, Iterable[Segment]], digits: int = 3) -> list[dict]:
    """``{(query, target): segments}`` -> the file's list of entries."""
    return [{"query": query, "target": target, **segment.as_dict(digits)}
            for (query, target), segments in pairs.items() for segment in segments]


def write_segments(path: str | os.PathLike, pairs: Mapping[Pair, Iterable[Segment]]) -> None:
    """Writes predictions in the format :func:`read_segments` reads."""
    with open(path, "w", encoding="utf-8") as file:
        json.dump(segment_entries(pairs), file, indent=1)
        file.write("\n")
