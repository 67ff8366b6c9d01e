"""The evaluation protocols of FIVR-5K/200K, CC_WEB_VIDEO, EVVE and SVD, as the authors run them.

Every dataset exposes ``name``, ``queries`` and ``database`` (id lists; a plain similarity matrix
follows their order) and ``evaluate(similarities, all_db=None, verbose=False)`` returning the
reference's metric names. ``all_db`` is the set of videos that were available (features extracted):
only those, plus the evaluated queries, take part, as in the authors' scripts where ``all_db``
collects every query and database video that could be indexed.

Protocols, in the authors' words and ours:

* FIVR: per query, rank the available database videos (the query itself excluded); AP against the
  annotated videos of the relevant labels that are available: DSVR = {ND, DS}, CSVR = + CS,
  ISVR = + IS. Metrics are means over the queries present in the similarities. FIVR-5K is the
  annotation's ``5k`` split (50 queries, 5,000 videos), FIVR-200K its ``200k`` split.
* CC_WEB_VIDEO: 24 query sets, each with its own labels ('E', 'S', 'L', 'M', 'V' positive). ``mAP``
  ranks only the videos labelled for the query's set (query-wise ground truth); ``mAP_star`` ranks
  every video of the dataset (whole-dataset ground truth). The ``_c`` variants use the cleaned
  annotation: the videos listed as excluded for a query set are dropped from the ranking and from
  the positives.
* EVVE: per query, the ranking over all results; a result outside ``all_db`` occupies no rank. AP is
  EVVE's trapezoidal AP against the positives of the query's event; ``mAP`` is the mean over the
  queries (the per-event means are printed with ``verbose``).
* SVD (labelled version): per query, threshold AP over its labelled targets that are available.
"""

from __future__ import annotations

import abc
import os
import sys
import warnings
from typing import Collection, Mapping

import numpy as np

from dns_tf.evaluation.annotations import (AnnotationFormatError, load_annotation_pickle,
                                           read_svd_ground_truth, require_keys)
from dns_tf.evaluation.metrics import (ranked_average_precision, threshold_average_precision,
                                       trapezoidal_average_precision)
from dns_tf.evaluation.similarities import QueryScores, Similarities, per_query_scores


class RetrievalDataset(abc.ABC):
    """A benchmark: its query and database ids and its evaluation protocol."""

    name: str
    queries: list[str]
    database: list[str]
    metric_names: tuple[str, ...]

    def evaluate(self, similarities: Similarities, all_db: Collection[str] | None = None,
                 verbose: bool = False) -> dict[str, float]:
        """Scores a retrieval run with the dataset's protocol.

        Args:
            similarities: ``{query_id: {database_id: score}}``, a ``SimilarityMatrix``, or an array
                [len(queries), len(database)] in the order of ``self.queries`` and ``self.database``.
                Higher scores rank first; equal scores keep the database order.
            all_db: the ids of the videos available for this run (the "subset" evaluation); None
                means the whole dataset. Queries present in ``similarities`` are always included.
            verbose: print a summary like the authors' scripts.

        Returns:
            ``{metric_name: value}`` with the names in ``self.metric_names``.
        """
        results = per_query_scores(similarities, self.queries, self.database)
        evaluated = [query for query in self.queries if query in results]
        if not evaluated:
            raise ValueError(
                f"{self.name}: none of the {len(self.queries)} queries has similarities "
                f"(got ids like {list(results)[:3]})")
        if all_db is None:
            available = None
        else:
            available = set(map(str, all_db))
            available.update(evaluated)
        metrics = self._evaluate(results, evaluated, available, verbose)
        if verbose:
            self._report(metrics, len(evaluated), available)
        return metrics

    @abc.abstractmethod
    def pair_labels(self, query: str) -> tuple[set[str], set[str] | None]:
        """Which database videos match ``query`` (a copy of some of it, for the dataset's
        strictest task) and which do not: ``(positives, negatives)``; ``negatives`` None means
        every other database video (the query itself excluded). Thresholds are fitted on these
        pairs (``dns-tf calibrate``)."""

    @abc.abstractmethod
    def _evaluate(self, results: Mapping[str, QueryScores], evaluated: list[str],
                  available: set[str] | None, verbose: bool) -> dict[str, float]:
        """The protocol: ``evaluated`` lists the dataset's queries present in ``results``."""

    def _report(self, metrics: Mapping[str, float], num_evaluated: int,
                available: set[str] | None) -> None:
        database = self.database if available is None else set(self.database) & available
        print(f"===== {self.name} =====")
        missing = len(self.queries) - num_evaluated
        if missing:
            print(f"[WARNING] {missing} queries are missing from the results and are ignored")
        print(f"Queries: {num_evaluated} videos")
        print(f"Database: {len(database)} videos")
        print("-" * 16)
        for name, value in metrics.items():
            print(f"{name}: {value:.4f}")


class FIVR(RetrievalDataset):
    """FIVR-5K or FIVR-200K (Kordopatis-Zilos et al., 2019): three retrieval tasks of growing scope.

    Args:
        annotation: the content of ``fivr.pickle``: ``{'5k'|'200k': {'queries', 'database'},
            'annotation': {query: {label: [video ids]}}}``.
        version: ``'5k'`` or ``'200k'``.
    """

    TASK_LABELS = {"DSVR": ("ND", "DS"), "CSVR": ("ND", "DS", "CS"), "ISVR": ("ND", "DS", "CS", "IS")}
    metric_names = tuple(TASK_LABELS)

    def __init__(self, annotation: Mapping, version: str = "200k", source: str = "fivr.pickle"):
        version = version.lower()
        require_keys(annotation, (version, "annotation"), source)
        split = annotation[version]
        require_keys(split, ("queries", "database"), f"{source}[{version!r}]")
        self.name = f"FIVR-{version.upper()}"
        self.version = version
        self.queries = sorted(map(str, split["queries"]))
        self.database = sorted(map(str, split["database"]))
        self.labels: Mapping[str, Mapping[str, list]] = annotation["annotation"]
        unannotated = [query for query in self.queries if query not in self.labels]
        if unannotated:
            raise AnnotationFormatError(
                f"{source}: {len(unannotated)} {version} queries have no entry in 'annotation' "
                f"(e.g. {unannotated[0]!r})")

    def pair_labels(self, query):
        """DSVR's relevant videos (near-duplicates, duplicate scenes) against all others."""
        return {str(video) for label in self.TASK_LABELS["DSVR"]
                for video in self.labels[query].get(label, ())}, None

    def _evaluate(self, results, evaluated, available, verbose):
        database = set(self.database)
        if available is not None:
            database &= available
        aps: dict[str, list[float]] = {task: [] for task in self.TASK_LABELS}
        for query in evaluated:
            scores = results[query]
            candidates = scores.candidates
            ranked = scores.ranking()
            counted = candidates.mask(database, cache=True) & (candidates.ids != query)
            ranked = ranked[counted[ranked]]
            for task, labels in self.TASK_LABELS.items():
                relevant = {video for label in labels for video in self.labels[query].get(label, ())}
                relevant &= database
                if not relevant:
                    warnings.warn(f"{self.name}: query {query} has no {task} relevant video among "
                                  "the available ones; it is left out of the mean")
                    continue
                aps[task].append(ranked_average_precision(
                    candidates.mask(relevant)[ranked], len(relevant)))
        return {task: float(np.mean(values)) if values else float("nan")
                for task, values in aps.items()}


class CCWebVideo(RetrievalDataset):
    """CC_WEB_VIDEO (Wu et al., 2007): near-duplicate retrieval over 24 query sets.

    Args:
        annotation: the content of ``cc_web_video.pickle``: ``index`` {video id: number},
            ``queries`` [24 ids], ``ground_truth`` [24 {number: label}], ``excluded`` [24 {number}].
    """

    POSITIVE_LABELS = "ESLMV"
    metric_names = ("mAP", "mAP_star", "mAP_c", "mAP_c_star")

    def __init__(self, annotation: Mapping, source: str = "cc_web_video.pickle"):
        require_keys(annotation, ("index", "queries", "ground_truth", "excluded"), source)
        self.name = "CC_WEB_VIDEO"
        self.video_numbers: Mapping[str, int] = annotation["index"]
        self.id_of_number = {number: str(video) for video, number in self.video_numbers.items()}
        self.queries = list(map(str, annotation["queries"]))
        self.database = sorted(map(str, self.video_numbers))
        self.ground_truth: list[Mapping[int, str]] = annotation["ground_truth"]
        self.excluded: list[Collection[int]] = annotation["excluded"]
        if not len(self.queries) == len(self.ground_truth) == len(self.excluded):
            raise AnnotationFormatError(
                f"{source}: 'queries', 'ground_truth' and 'excluded' must have one entry per query "
                f"set, got {len(self.queries)}, {len(self.ground_truth)}, {len(self.excluded)}")

    def pair_labels(self, query):
        """The query set's positively labelled videos against its other labelled ones (the
        cleaned annotation's exclusions left out)."""
        query_set = self.queries.index(query)
        ids_of = self.id_of_number
        excluded = set(self.excluded[query_set])
        labels = {number: label for number, label in self.ground_truth[query_set].items()
                  if number not in excluded and number in ids_of}
        positives = {ids_of[n] for n, label in labels.items() if label in self.POSITIVE_LABELS}
        negatives = {ids_of[n] for n, label in labels.items() if label not in self.POSITIVE_LABELS}
        return positives, negatives - {query}

    def _evaluate(self, results, evaluated, available, verbose):
        sums = dict.fromkeys(self.metric_names, 0.0)
        numbers_cache: dict[int, np.ndarray] = {}
        for query_set, (query, labels) in enumerate(zip(self.queries, self.ground_truth)):
            if query not in results:
                continue
            scores = results[query]
            candidates = scores.candidates
            numbers = numbers_cache.get(id(candidates))
            if numbers is None:
                numbers = np.fromiter((self.video_numbers.get(video, -1) for video in candidates.ids),
                                      np.int64, count=len(candidates))
                numbers_cache[id(candidates)] = numbers
            # Results outside the dataset are skipped, as the authors' loop does.
            known = numbers >= 0
            if available is not None:
                known &= candidates.mask(available, cache=True)
            excluded = set(self.excluded[query_set])
            positive_numbers = [number for number, label in labels.items()
                                if label in self.POSITIVE_LABELS]
            labelled = np.isin(numbers, list(labels))
            positive = np.isin(numbers, positive_numbers)
            is_excluded = np.isin(numbers, list(excluded))
            ranked = scores.ranking()
            for name, all_videos, clean in (("mAP", False, False), ("mAP_star", True, False),
                                            ("mAP_c", False, True), ("mAP_c_star", True, True)):
                counted = known & (labelled | all_videos) & ~(is_excluded & clean)
                order = ranked[counted[ranked]]
                num_positives = sum(1 for number in positive_numbers
                                    if not (clean and number in excluded))
                sums[name] += ranked_average_precision(positive[order], num_positives)
        return {name: total / len(evaluated) for name, total in sums.items()}


class EVVE(RetrievalDataset):
    """EVVE (Revaud et al., 2013): event retrieval, 620 queries over 13 events.

    Args:
        annotation: the content of ``evve.pickle``: ``annotation`` {event: (queries, positives,
            null)}, ``queries`` and ``database`` id lists.
    """

    metric_names = ("mAP",)

    def __init__(self, annotation: Mapping, source: str = "evve.pickle"):
        require_keys(annotation, ("annotation", "queries", "database"), source)
        self.name = "EVVE"
        self.events: Mapping[str, tuple] = annotation["annotation"]
        self.queries = sorted(map(str, annotation["queries"]))
        self.database = sorted(map(str, annotation["database"]))
        self.event_of = {}
        for event, entry in self.events.items():
            if not (isinstance(entry, tuple) and len(entry) == 3):
                raise AnnotationFormatError(
                    f"{source}: annotation[{event!r}] must be (queries, positives, null)")
            self.event_of.update({query: event for query in entry[0]})
        orphans = [query for query in self.queries if query not in self.event_of]
        if orphans:
            raise AnnotationFormatError(
                f"{source}: {len(orphans)} queries belong to no event (e.g. {orphans[0]!r})")

    def pair_labels(self, query):
        """The videos of the query's event against all others."""
        return set(map(str, self.events[self.event_of[query]][1])), None

    def _evaluate(self, results, evaluated, available, verbose):
        if available is None:
            available = set(self.database).union(self.queries)
        aps_by_event: dict[str, list[float]] = {event: [] for event in self.events}
        for query in evaluated:
            scores = results[query]
            event = self.event_of[query]
            positives = set(self.events[event][1]) & available
            ranked = scores.ranking()
            outside = ~scores.candidates.mask(available, cache=True)[ranked]
            is_positive = scores.candidates.mask(positives)[ranked]
            # A result outside the available videos takes no rank.
            ranks = np.arange(ranked.size) - (np.cumsum(outside) - outside)
            aps_by_event[event].append(
                trapezoidal_average_precision(ranks[is_positive], len(positives)))
        if verbose:
            for event in sorted(self.events):
                aps = aps_by_event[event]
                if aps:
                    print(f"{event:<36} mAP = {np.mean(aps):.4f}")
        return {"mAP": float(np.mean([ap for aps in aps_by_event.values() for ap in aps]))}


class SVD(RetrievalDataset):
    """SVD (Jiang et al., 2019), labelled version: near-duplicates among each query's labelled pairs.

    Args:
        ground_truth: ``{query: {target: label}}`` from ``test_groundtruth``; label 1 is positive.
    """

    metric_names = ("mAP",)

    def __init__(self, ground_truth: Mapping[str, Mapping[str, int]]):
        self.name = "SVD"
        self.ground_truth = ground_truth
        self.queries = sorted(ground_truth)
        self.database = sorted({target for targets in ground_truth.values() for target in targets})

    def pair_labels(self, query):
        """The query's labelled targets: label 1 matches, the others do not."""
        labels = self.ground_truth[query]
        return ({t for t, label in labels.items() if label == 1},
                {t for t, label in labels.items() if label != 1})

    def _evaluate(self, results, evaluated, available, verbose):
        aps = []
        missing_pairs = 0
        for query in evaluated:
            scores = results[query]
            targets = [(target, label) for target, label in self.ground_truth[query].items()
                       if available is None or target in available]
            target_scores = []
            for target, _ in targets:
                score = scores.score_of(target)
                if score is None:
                    # An unscored target ranks below every scored one.
                    missing_pairs += 1
                    score = -np.inf
                target_scores.append(score)
            aps.append(threshold_average_precision(
                np.array([label == 1 for _, label in targets], dtype=bool), np.array(target_scores)))
        if missing_pairs and verbose:
            print(f"[WARNING] {missing_pairs} labelled pairs have no similarity and rank last",
                  file=sys.stderr)
        return {"mAP": float(np.mean(aps))}


DATASET_NAMES = ("FIVR-5K", "FIVR-200K", "CC_WEB_VIDEO", "EVVE", "SVD")
_ANNOTATION_FILES = {"FIVR-5K": "fivr.pickle", "FIVR-200K": "fivr.pickle",
                     "CC_WEB_VIDEO": "cc_web_video.pickle", "EVVE": "evve.pickle",
                     "SVD": "test_groundtruth"}


def canonical_dataset_name(name: str) -> str:
    """The dataset's name as in ``DATASET_NAMES``, matched case-insensitively."""
    matches = [known for known in DATASET_NAMES if known.lower() == name.strip().lower()]
    if not matches:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
    return matches[0]


def load_dataset(name: str, annotation_path: str | os.PathLike) -> RetrievalDataset:
    """Builds a benchmark from its official annotation file.

    Args:
        name: one of ``FIVR-5K``, ``FIVR-200K``, ``CC_WEB_VIDEO``, ``EVVE``, ``SVD`` (any case).
        annotation_path: the annotation file (``fivr.pickle``, ``cc_web_video.pickle``,
            ``evve.pickle`` or SVD's ``test_groundtruth``), or a folder holding it under that name.
    """
    name = canonical_dataset_name(name)
    path = os.fspath(annotation_path)
    if os.path.isdir(path):
        path = os.path.join(path, _ANNOTATION_FILES[name])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name} annotation file not found: {path}")
    if name == "SVD":
        return SVD(read_svd_ground_truth(path))
    annotation = load_annotation_pickle(path)
    if name.startswith("FIVR"):
        return FIVR(annotation, version=name.split("-")[1], source=path)
    if name == "CC_WEB_VIDEO":
        return CCWebVideo(annotation, source=path)
    return EVVE(annotation, source=path)
