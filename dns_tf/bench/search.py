"""DnS at corpus scale: a synthetic index of N videos, and each search stage's latency per query.

The index (a real :class:`~dns_tf.index.VideoIndex`: SQLite, fine store, ScaNN generation) is
built once per setting in a child process under ``--cache`` and reused by later runs. Its videos
are generated directly in the stored form, not by the networks (which would take days at 100K):

* lengths: log-normal frame counts at 1 fps, median 60 (one minute), sigma 0.75, clipped to
  [5, 300];
* fine representations ``[T, 9, 512]``: a video is a run of scenes (4 to 16 frames each); a scene
  has a random base code (``bits``: random bits; ``attention``: unit Gaussian regions) and each of
  its frames is the base perturbed (``bits``: 1/8 of the bits flipped; float: Gaussian noise of
  norm 0.5), so frames of a scene are alike, frames of different scenes are not;
* planted near-duplicates: ``stories`` source videos of 60 frames; ``related`` videos per story
  each copy a segment of their source (between 10 % and 100 % of it, re-perturbed like a
  re-encode) into filler scenes, so each query has a graded set of relevant videos in the index;
  the queries are fresh copies of the whole source;
* coarse vectors ``[1024]``: the L2-normalised projection (a fixed random ``[512, 1024]``
  matrix) of the video's mean region representation, a linear stand-in for the coarse student
  that keeps the structure above (shared frames, higher coarse similarity);
* selector self-similarity scores: Beta(4, 3) draws.

Search runs :class:`~dns_tf.retrieval.DnSRetriever` with the fine student and the selector:
seeded random weights unless ``--fine-model`` / ``--selector`` name trained ones (cost does not
depend on the weights; the overlap only means something with trained networks, see below).
Measured per query: coarse = ScaNN top-100; DnS at p % = exact coarse scores of every video, the
selector on every pair, the fine student on the top p % of them (read from the fine store in
chunks, so memory does not grow with N beyond the coarse vectors); fine-only = the fine student on
every video, timed on a random sample of ``--fine-sample`` videos per query and extrapolated to N
(reported as such). ``top100_overlap_dns_5`` is the share of the fine-only top-100 that DnS at 5 %
also returns in its top-100, over ``--overlap-queries`` queries whose fine-only ranking is computed
in full. Peak RSS is ``max(build, search)``, each measured in its own process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import resource
import shutil
import sys
import time
from concurrent import futures
from typing import Any, Iterator

import numpy as np

from dns_tf.fine_representation import REGIONS, stored_kind
from dns_tf.bench.registry import machine_load

FEATURE_DIMS = 512        # region dims of the students, and the bits of the binarization student
COARSE_DIMS = 1024        # the coarse student's output
SOURCE_FRAMES = 60        # frames of a story's source video (and of the queries)
CACHE_VERSION = 1         # bump when the generator or the index layout changes
_BATCH = 256              # videos per add_many while building


def _default_cache() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "dns-tf", "bench_search")


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The synthetic collection: everything that decides its bytes (and so its cache key)."""

    videos: int
    fine: str = "binarization"      # "binarization" (packed bits) or "attention" (float16)
    stories: int = 20               # query stories, each with ``related`` planted videos
    related: int = 100
    seed: int = 0

    def __post_init__(self):
        if self.fine not in ("binarization", "attention"):
            raise ValueError(f"fine must be 'binarization' or 'attention', got {self.fine!r}")
        if self.videos < 2 * self.stories * self.related:
            raise ValueError(f"--videos {self.videos} is too small for {self.stories} stories of "
                             f"{self.related} related videos (at least "
                             f"{2 * self.stories * self.related} needed)")

    @property
    def fine_kind(self) -> str:
        return "bits" if self.fine == "binarization" else "float16"

    @property
    def key(self) -> str:
        text = json.dumps({**dataclasses.asdict(self), "version": CACHE_VERSION}, sort_keys=True)
        return f"{self.fine}-{self.videos}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"

    @property
    def stride(self) -> int:
        """Every ``stride``-th video is a planted related video (spread over the whole index)."""
        return self.videos // (self.stories * self.related)


class Generator:
    """Deterministic synthetic videos of a :class:`Corpus` in the index's stored form.

    Frames are drawn from small pools of perturbations (so generating 100K videos takes seconds
    of CPU, not the hours that per-bit random draws would): ``bits`` XOR a flip mask with 1/8 of
    its bits set, float adds a noise frame.
    """

    _POOL = 4096

    def __init__(self, corpus: Corpus):
        self.corpus = corpus
        rng = np.random.default_rng([corpus.seed, 0])
        if corpus.fine_kind == "bits":
            words = FEATURE_DIMS // 8
            draws = [rng.integers(0, 256, (self._POOL, REGIONS, words), np.uint8) for _ in range(3)]
            self.noise = draws[0] & draws[1] & draws[2]      # each bit set with probability 1/8
        else:
            noise = rng.standard_normal((self._POOL, REGIONS, FEATURE_DIMS), np.float32)
            self.noise = noise * (0.5 / np.sqrt(FEATURE_DIMS))
        self.projection = rng.standard_normal((FEATURE_DIMS, COARSE_DIMS), np.float32)

    # ------------------------------------------------------------------ frames
    def _scene_base(self, rng: np.random.Generator) -> np.ndarray:
        if self.corpus.fine_kind == "bits":
            return rng.integers(0, 256, (REGIONS, FEATURE_DIMS // 8), np.uint8)
        base = rng.standard_normal((REGIONS, FEATURE_DIMS), np.float32)
        return base / np.linalg.norm(base, axis=-1, keepdims=True)

    def _perturb(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``frames [T, 9, ...]`` with fresh noise (a frame of a scene, or a re-encoded copy)."""
        noise = self.noise[rng.integers(0, self._POOL, len(frames))]
        if self.corpus.fine_kind == "bits":
            return frames ^ noise
        frames = frames.astype(np.float32) + noise
        return frames / np.linalg.norm(frames, axis=-1, keepdims=True)

    def _scenes(self, frames: int, rng: np.random.Generator) -> np.ndarray:
        """``frames`` frames of random scenes, 4 to 16 frames per scene."""
        lengths = []
        while sum(lengths) < frames:
            lengths.append(int(rng.integers(4, 17)))
        bases = [np.repeat(self._scene_base(rng)[None], n, axis=0) for n in lengths]
        return self._perturb(np.concatenate(bases)[:frames], rng)

    def _source(self, story: int) -> np.ndarray:
        return self._scenes(SOURCE_FRAMES, np.random.default_rng([self.corpus.seed, 1, story]))

    @staticmethod
    def _length(rng: np.random.Generator) -> int:
        return int(np.clip(np.round(rng.lognormal(np.log(60.0), 0.75)), 5, 300))

    def story_of(self, video: int) -> int:
        """The story a video is planted for, or -1 for an unrelated video."""
        stride = self.corpus.stride
        if video % stride or video // stride >= self.corpus.stories * self.corpus.related:
            return -1
        return (video // stride) % self.corpus.stories

    def fine(self, video: int) -> np.ndarray:
        """Video ``video``'s stored fine representation ``[T, 9, 64] uint8`` or ``[T, 9, 512]``."""
        rng = np.random.default_rng([self.corpus.seed, 2, video])
        frames = self._length(rng)
        story = self.story_of(video)
        if story < 0:
            return self._stored(self._scenes(frames, rng))
        # A copy of 10 % to 100 % of the source, somewhere inside the video.
        copied = int(np.clip(round(rng.uniform(0.1, 1.0) * SOURCE_FRAMES), 5, SOURCE_FRAMES))
        start = int(rng.integers(0, SOURCE_FRAMES - copied + 1))
        segment = self._perturb(self._source(story)[start:start + copied], rng)
        before = int(rng.integers(0, max(frames - copied, 0) + 1))
        after = max(frames - copied - before, 0)
        parts = [self._scenes(n, rng) for n in (before,) if n] + [segment]
        parts += [self._scenes(after, rng)] if after else []
        return self._stored(np.concatenate(parts))

    def query(self, story: int, variant: int = 0) -> np.ndarray:
        """A fresh copy of story ``story``'s whole source (``variant`` picks the noise)."""
        rng = np.random.default_rng([self.corpus.seed, 3, story, variant])
        return self._stored(self._perturb(self._source(story), rng))

    def _stored(self, frames: np.ndarray) -> np.ndarray:
        return frames if self.corpus.fine_kind == "bits" else frames.astype(np.float16)

    # ------------------------------------------------------------------ coarse, selector
    def coarse(self, fines: list[np.ndarray]) -> np.ndarray:
        """``[B, 1024]`` unit coarse vectors: the projected mean region representation."""
        if self.corpus.fine_kind == "bits":
            means = [np.unpackbits(f, axis=-1).mean(axis=(0, 1)) * 2.0 - 1.0 for f in fines]
        else:
            means = [f.astype(np.float32).mean(axis=(0, 1)) for f in fines]
        coarse = np.stack(means).astype(np.float32) @ self.projection
        return coarse / np.linalg.norm(coarse, axis=1, keepdims=True)

    def selector_scores(self, videos: np.ndarray) -> np.ndarray:
        return np.array([np.random.default_rng([self.corpus.seed, 4, int(v)]).beta(4.0, 3.0)
                         for v in videos], np.float32)

    def batches(self, size: int = _BATCH) -> Iterator[tuple[list[str], np.ndarray, list, np.ndarray]]:
        """``(ids, coarse [B, 1024], fine B arrays, selector [B])`` over the whole corpus."""
        for start in range(0, self.corpus.videos, size):
            videos = np.arange(start, min(start + size, self.corpus.videos))
            fines = [self.fine(int(v)) for v in videos]
            yield ([f"v{int(v):07d}" for v in videos], self.coarse(fines), fines,
                   self.selector_scores(videos))


# ---------------------------------------------------------------------- build (child process)
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _coarse_config():
    from dns_tf.index.coarse import CoarseConfig

    return CoarseConfig(brute_force_below=1)  # the coarse stage is always ScaNN here


def build_index(corpus: Corpus, path: str) -> dict[str, Any]:
    """Writes the synthetic index to ``path`` (through ``path + '.partial'``) and returns its
    build measurements, also saved as ``path/bench_build.json``."""
    from dns_tf.index.store import VideoIndex

    load_before = os.getloadavg()

    partial = path + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    generator = Generator(corpus)
    shape_tail = (REGIONS, FEATURE_DIMS)
    generate_s = add_s = 0.0
    with VideoIndex.create(partial, coarse_dims=COARSE_DIMS, fine_kind=corpus.fine_kind,
                           fine_shape_tail=shape_tail, config=_coarse_config(),
                           auto_rebuild=False,
                           metadata={"synthetic": dataclasses.asdict(corpus)}) as index:
        clock = time.perf_counter()
        for ids, coarse, fines, scores in generator.batches():
            now = time.perf_counter()
            generate_s += now - clock
            index.add_many(ids, coarse, fines, scores)
            clock = time.perf_counter()
            add_s += clock - now
        index.rebuild()
        searcher_s = time.perf_counter() - clock
        stats = index.stats()
    build = {"videos": corpus.videos, "frames": stats["frames"],
             "generate_s": round(generate_s, 2), "add_s": round(add_s, 2),
             "searcher_s": round(searcher_s, 2),
             "build_videos_per_s": round(corpus.videos / (add_s + searcher_s), 1),
             "bytes_on_disk": stats["bytes_on_disk"], "peak_rss_mb": round(_peak_rss_mb(), 1),
             **machine_load(load_before)}
    with open(os.path.join(partial, "bench_build.json"), "w", encoding="utf-8") as file:
        json.dump(build, file)
    os.rename(partial, path)
    return build


def cached_index(corpus: Corpus, cache: str) -> tuple[str, dict[str, Any], bool]:
    """``(index path, build measurements, built now)``: builds in a fresh process (its own peak
    RSS, no TensorFlow loaded) unless ``cache`` already holds this corpus."""
    path = os.path.join(cache, corpus.key)
    built_now = not os.path.isfile(os.path.join(path, "bench_build.json"))
    if built_now:
        os.makedirs(cache, exist_ok=True)
        with futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            pool.submit(build_index, corpus, path).result()
    with open(os.path.join(path, "bench_build.json"), encoding="utf-8") as file:
        return path, json.load(file), built_now


# ---------------------------------------------------------------------- search
def _percentiles(seconds: list[float]) -> dict[str, float]:
    milliseconds = 1000.0 * np.asarray(seconds)
    return {"p50": round(float(np.percentile(milliseconds, 50)), 2),
            "p99": round(float(np.percentile(milliseconds, 99)), 2)}


def _networks(corpus: Corpus, fine_model: str | None, selector_model: str | None, seed: int):
    import keras

    from dns_tf.convert import load_network
    from dns_tf.models import FineGrainedStudent, SelectorNetwork

    keras.utils.set_random_seed(seed)
    if fine_model:
        fine = load_network(fine_model, FineGrainedStudent, "--fine-model")
    else:
        fine = FineGrainedStudent(dims=FEATURE_DIMS, attention=corpus.fine == "attention",
                                  binarization=corpus.fine == "binarization", bits=FEATURE_DIMS)
    selector = (load_network(selector_model, SelectorNetwork, "--selector") if selector_model
                else SelectorNetwork(dims=FEATURE_DIMS))
    return fine, selector


def run_search_benchmark(corpus: Corpus, cache: str, queries: int = 5,
                         coarse_queries: int = 200, fine_queries: int = 3,
                         fine_sample: int = 1000, overlap_queries: int = 1,
                         fine_model: str | None = None,
                         selector_model: str | None = None) -> dict[str, Any]:
    """Builds (or reuses) the corpus's index and measures search on it (module docstring)."""
    overlap_queries = min(overlap_queries, queries)
    load_before = os.getloadavg()
    path, build, built_now = cached_index(corpus, cache)

    from dns_tf.index.store import VideoIndex
    from dns_tf.retrieval import DnSRetriever, IndexedVideos, LocalBackend, SearchConfig

    generator = Generator(corpus)
    fine_student, selector = _networks(corpus, fine_model, selector_model, corpus.seed)
    if stored_kind(fine_student) != corpus.fine_kind:
        raise ValueError(f"--fine-model is a {fine_student.kind} student, the index stores "
                         f"{corpus.fine} representations")

    def query(number: int) -> IndexedVideos:
        story, variant = number % corpus.stories, number // corpus.stories
        fine = generator.query(story, variant)
        return IndexedVideos(coarse=generator.coarse([fine]), fine=[fine],
                             selector=np.array([0.6], np.float32))

    latency: dict[str, Any] = {}
    with VideoIndex.open(path, readonly=True, config=_coarse_config(),
                         auto_rebuild=False) as index:
        backend = LocalBackend(None, fine_student, selector)
        retriever = DnSRetriever(index, backend)
        videos = len(index)

        # Warm-up (traces, XLA compilations, caches) on a query that is not timed.
        retriever.search_indexed(query(queries), 0, SearchConfig(mode="dns", percentage=1))

        def timed(config: SearchConfig, count: int):
            seconds, rankings = [], []
            for number in range(count):
                indexed = query(number)
                clock = time.perf_counter()
                rankings.append(retriever.search_indexed(indexed, 0, config))
                seconds.append(time.perf_counter() - clock)
            return seconds, rankings

        latency["coarse"] = _percentiles(timed(SearchConfig(mode="coarse", candidates=100),
                                               coarse_queries)[0])
        dns_5 = []
        for percentage in (1, 5, 10):
            seconds, rankings = timed(SearchConfig(mode="dns", percentage=percentage), queries)
            latency[f"dns_{percentage}"] = _percentiles(seconds)
            if percentage == 5:
                dns_5 = rankings

        # Fine-only: exact coarse + the fine student on a random sample, scaled to N.
        rng = np.random.default_rng([corpus.seed, 5])
        sample_size = min(fine_sample, videos)
        all_ids = index.ids()
        fine_seconds = []
        for number in range(fine_queries):
            indexed = query(number)
            sample = [all_ids[i] for i in rng.choice(videos, sample_size, replace=False)]
            clock = time.perf_counter()
            index.coarse_scores_all(indexed.coarse)
            coarse_s = time.perf_counter() - clock
            clock = time.perf_counter()
            retriever.fine_scores(indexed.fine[0], sample)
            fine_seconds.append(coarse_s + (time.perf_counter() - clock) * videos / sample_size)
        latency["fine"] = {**_percentiles(fine_seconds), "extrapolated_from_videos": sample_size,
                           "queries": fine_queries}

        # Exact fine-only rankings (every video compared) for the overlap; also times them.
        overlaps, fine_full_seconds = [], []
        for number in range(overlap_queries):
            clock = time.perf_counter()
            fine_only = retriever.search_indexed(query(number), 0,
                                                 SearchConfig(mode="fine", top=100))
            fine_full_seconds.append(time.perf_counter() - clock)
            overlaps.append(len(set(fine_only.ids) & set(dns_5[number].ids)) / 100.0)
        planted = [sum(generator.story_of(int(i[1:])) == number % corpus.stories
                       for i in ranking.ids) / 100.0 for number, ranking in enumerate(dns_5)]
        bytes_per_video = index.stats()["bytes_on_disk"] / videos

    search_rss = _peak_rss_mb()
    return {
        "videos": videos,
        "build_videos_per_s": build["build_videos_per_s"],
        "bytes_per_video": round(bytes_per_video, 1),
        "peak_rss_mb": round(max(search_rss, build["peak_rss_mb"]), 1),
        "latency_ms": latency,
        "top100_overlap_dns_5": round(float(np.mean(overlaps)), 4) if overlaps else None,
        "settings": {
            "fine": corpus.fine, "fine_kind": corpus.fine_kind,
            "networks": {"fine": fine_model or "random weights (seeded)",
                         "selector": selector_model or "random weights (seeded)"},
            "queries": queries, "coarse_queries": coarse_queries,
            "overlap_queries": overlap_queries,
            "fine_latency": f"extrapolated: the fine student timed on {sample_size} random videos "
                            f"per query, scaled to {videos}, plus exact coarse scoring",
            "fine_only_full_ms": [round(1000 * s, 1) for s in fine_full_seconds],
            "planted_share_of_dns_5_top100": round(float(np.mean(planted)), 4),
            "stories": corpus.stories, "related_per_story": corpus.related,
            "index": path, "index_built_this_run": built_now,
            "build": build, "search_peak_rss_mb": round(search_rss, 1),
            **machine_load(load_before),
        },
    }


def add_arguments(parser) -> None:
    parser.add_argument("--videos", type=int, default=None,
                        help="indexed videos (default: 100000 with --fine binarization, 10000 "
                             "with --fine attention)")
    parser.add_argument("--fine", choices=("binarization", "attention"), default="binarization",
                        help="fine student, and so the stored fine representation")
    parser.add_argument("--cache", default=_default_cache(),
                        help="where built indexes are kept between runs (default: %(default)s)")
    parser.add_argument("--queries", type=int, default=5, help="timed DnS queries per percentage")
    parser.add_argument("--coarse-queries", type=int, default=200, help="timed coarse queries")
    parser.add_argument("--fine-queries", type=int, default=3,
                        help="fine-only queries timed on a sample and extrapolated")
    parser.add_argument("--fine-sample", type=int, default=1000,
                        help="videos per fine-only query actually compared")
    parser.add_argument("--overlap-queries", type=int, default=1,
                        help="queries ranked by the fine student over every video for the "
                             "overlap (each costs a full fine-only search)")
    parser.add_argument("--fine-model", default=None,
                        help="trained fine student (.keras / official .pth); default random")
    parser.add_argument("--selector", default=None,
                        help="trained selector (.keras / official .pth); default random")


def measure(args) -> dict[str, Any]:
    videos = args.videos or (100_000 if args.fine == "binarization" else 10_000)
    sizes = dict(queries=args.queries, coarse_queries=args.coarse_queries,
                 fine_queries=args.fine_queries, fine_sample=args.fine_sample,
                 overlap_queries=args.overlap_queries)
    stories, related = 20, 100
    if args.quick:
        videos = args.videos or 2_000
        stories, related = 4, 50
        sizes.update(queries=min(args.queries, 4), coarse_queries=min(args.coarse_queries, 20),
                     fine_queries=1, fine_sample=min(args.fine_sample, 200),
                     overlap_queries=min(args.overlap_queries, 1))
    try:
        corpus = Corpus(videos=videos, fine=args.fine, stories=stories, related=related)
    except ValueError as error:
        print(f"dns-tf bench search: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return run_search_benchmark(corpus, args.cache, fine_model=args.fine_model,
                                selector_model=args.selector, **sizes)
