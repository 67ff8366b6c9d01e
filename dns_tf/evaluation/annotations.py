"""Reads the benchmarks' official annotation files without running code from them.

The FIVR, CC_WEB_VIDEO and EVVE annotations ship as pickles, and unpickling can call any importable
function. ``load_annotation_pickle`` admits only builtin containers (dict, list, tuple, set,
frozenset) and refuses everything else before it is called, naming the file. SVD's ground truth is
a text file of ``<query> <target> <label>`` lines, read by ``read_svd_ground_truth``.

Example:

    fivr = load_annotation_pickle("annotations/fivr.pickle")
    fivr["5k"]["queries"][:2]  # ['8ja0i5wV-io', '6dPo0jmeGZc']
"""

from __future__ import annotations

import builtins
import os
import pickle
from typing import Any

from dns_tf.safe_pickle import RestrictedUnpickler

_ALLOWED_CONTAINERS = ("dict", "list", "tuple", "set", "frozenset")
# Python 2 pickles name the builtins module ``__builtin__``.
_ALLOWED_GLOBALS = {(module, name): getattr(builtins, name)
                    for module in ("builtins", "__builtin__") for name in _ALLOWED_CONTAINERS}


class AnnotationFormatError(ValueError):
    """An annotation file does not have the layout its dataset expects."""


class UnsafeAnnotationError(AnnotationFormatError, pickle.UnpicklingError):
    """An annotation pickle asked for something other than a builtin container."""


# The benchmarks' annotation pickles are a few MB.
MAX_ANNOTATION_BYTES = 1 * 2**30


def load_annotation_pickle(path: str | os.PathLike) -> Any:
    """Unpickles an annotation file that may contain only builtin containers, strings and numbers.

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafeAnnotationError: the pickle references any other class or function.
        AnnotationFormatError: the file is not a readable pickle.
    """
    path = os.fspath(path)
    with open(path, "rb") as file:
        try:
            return RestrictedUnpickler(
                file, path, _ALLOWED_GLOBALS, UnsafeAnnotationError,
                f"annotation pickles may only hold builtin containers "
                f"({', '.join(_ALLOWED_CONTAINERS)}), strings and numbers",
                size=os.fstat(file.fileno()).st_size, max_bytes=MAX_ANNOTATION_BYTES).load()
        except UnsafeAnnotationError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError,
                IndexError, AttributeError, UnicodeDecodeError) as error:
            raise AnnotationFormatError(
                f"{path}: not a readable annotation pickle ({type(error).__name__}: {error})"
            ) from error


def read_svd_ground_truth(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Reads SVD's ``test_groundtruth``: one ``<query> <target> ... <label>`` line per labelled pair.

    Returns:
        ``{query: {target: label}}`` with queries and, within a query, targets in file order; label
        1 marks a near-duplicate, 0 a hard negative. A repeated pair keeps its last label.
    """
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8") as file:
            lines = file.readlines()
    except UnicodeDecodeError as error:
        raise AnnotationFormatError(
            f"{path}: not SVD's text ground truth of '<query> <target> <label>' lines ({error})"
        ) from None
    ground_truth: dict[str, dict[str, int]] = {}
    for line_number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 3:
            raise AnnotationFormatError(
                f"{path}:{line_number}: expected '<query> <target> <label>', got {line.strip()!r}")
        try:
            label = int(fields[-1])
        except ValueError:
            raise AnnotationFormatError(
                f"{path}:{line_number}: label {fields[-1]!r} is not an integer") from None
        ground_truth.setdefault(fields[0], {})[fields[1]] = label
    if not ground_truth:
        raise AnnotationFormatError(f"{path}: no labelled pairs found")
    return ground_truth


def require_keys(mapping: Any, keys: tuple[str, ...], where: str) -> None:
    """Raises AnnotationFormatError unless ``mapping`` is a dict holding every key in ``keys``."""
    if not isinstance(mapping, dict):
        raise AnnotationFormatError(f"{where}: expected a dict, got {type(mapping).__name__}")
    missing = [key for key in keys if key not in mapping]
    if missing:
        raise AnnotationFormatError(
            f"{where}: missing field(s) {', '.join(map(repr, missing))}; found "
            f"{', '.join(map(repr, list(mapping)[:10]))}")
