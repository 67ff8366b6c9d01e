"""A generated collection of real video files with FIVR-like relevance labels, for the demo.

Every video is an H.264 MP4 written by the ``ffmpeg`` binary of imageio-ffmpeg:

- **source videos**: a few *scenes* cut together, each from one of FFmpeg's synthetic sources
  (mandelbrot zooms, game of life, cellular automata, test patterns, gradients, Perlin noise, zone
  plates, Sierpinski fractals, plasma) with random parameters, a slow pan over a larger rendering,
  a hue rotation and a moving box, so that no two sources look alike. Sources are the **queries**
  and the unrelated **distractors**.
- **siblings** of each query (hard distractors, unrelated to it): sources with the query's *look*
  (the same generators in the same order, palettes, colours, rules, hue) and other *content*
  (seeds, places, zooms, paths), as videos of one event from another camera in FIVR.
- **near-duplicates (ND)** of each query: the whole video under two or three real edits (crop,
  rescale, mirror, colour shifts, blur, noise, a logo, a frame border, speed or frame rate change)
  and a re-encode at a random quality (low bitrates included).
- **duplicate scenes (DS)** of each query: part of it only: a trimmed segment, a segment spliced
  with a segment of another video (a partial overlap), the query as a picture-in-picture over
  another video, and **inserted copies**: a few seconds of the query cut into a long video of
  unrelated footage (pieces of distractors and of other queries' siblings), where a global
  descriptor is mostly the unrelated footage and only frame-level matching finds the copy.

The labels follow FIVR's: for each query, every database video is ``"ND"``, ``"DS"`` or
``"unrelated"``. Queries are not part of the database (as in FIVR-5K). ``segments.json`` records where
each copied segment sits in the query and in the derivative, in seconds, exact from the plan (through
trims, splices, insertions and speed changes).

The plan (every ffmpeg command) is a pure function of the :class:`CollectionConfig`: the same seed
gives the same commands, hence the same ``collection.json`` and, FFmpeg running single-threaded in
bit-exact mode, byte-identical files (on the same FFmpeg build and, for text logos, the same
default font; without a usable font logos are drawn as boxes). Each file carries a key of its
command and inputs in its metadata; generating again skips files whose key matches, so an
interrupted run resumes, and a changed configuration regenerates only what changed. Files are
written to a temporary name and renamed when complete.

Example:

    collection = generate_collection("demo_videos", CollectionConfig(seed=0))
    collection.queries                  # ('q000', 'q001', ...)
    collection.path("q000_nd0")         # PosixPath('demo_videos/videos/q000_nd0.mp4')
    collection.ground_truth()["q000"]   # {'q000_nd0': 'ND', 'q000_ds0': 'DS', 'd000': 'unrelated'}
    collection.segments()[0]            # {'query': 'q000', 'target': 'q000_nd0', 'query_start': 0.0,
                                        #  'query_end': 12.0, 'target_start': 0.0, 'target_end': 12.0}
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import random
import subprocess
from typing import Callable

import av
import imageio_ffmpeg
from tqdm.auto import tqdm

from dns_tf.flags import field

FORMAT_VERSION = 2
LABELS = ("ND", "DS", "unrelated")


@dataclasses.dataclass(frozen=True)
class CollectionConfig:
    """What to generate; the defaults make the demo's held-out collection (12 queries, 138
    database videos)."""

    seed: int = field(0, "random seed: the same seed gives the same collection")
    num_queries: int = field(12, "query videos (each with its derivatives and siblings)")
    near_duplicates: int = field(2, "near-duplicate (ND) derivatives per query: whole-video edits")
    duplicate_scenes: int = field(3, "duplicate-scene (DS) derivatives per query: trims, "
                                     "splices, picture-in-picture")
    inserted_copies: int = field(2, "DS derivatives per query that hide a few seconds of it "
                                    "inside a long unrelated video")
    siblings: int = field(2, "hard distractors per query: its look (generators, colours, "
                             "palettes), other content; unrelated to it")
    num_distractors: int = field(30, "unrelated source videos in the database")
    seconds: float = field(12.0, "length of a source video in seconds")
    host_seconds: float = field(36.0, "length of the long videos that hide a copy")
    scenes: int = field(3, "scenes (different synthetic sources) cut together in a source video")
    width: int = field(320, "frame width of source videos (even)")
    height: int = field(240, "frame height of source videos (even)")
    fps: int = field(10, "frame rate of source videos (features are sampled at 1 fps; 10 keeps "
                          "generation cheap)")
    workers: int = field(2, "ffmpeg processes run in parallel (does not change the output)")

    def __post_init__(self):
        for name in ("num_queries", "scenes", "width", "height", "fps", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"CollectionConfig.{name} must be at least 1, "
                                 f"got {getattr(self, name)}")
        for name in ("near_duplicates", "duplicate_scenes", "inserted_copies", "siblings",
                     "num_distractors"):
            if getattr(self, name) < 0:
                raise ValueError(f"CollectionConfig.{name} cannot be negative, "
                                 f"got {getattr(self, name)}")
        if self.width % 2 or self.height % 2:
            raise ValueError(f"CollectionConfig width and height must be even (H.264 4:2:0), "
                             f"got {self.width}x{self.height}")
        if self.seconds * self.fps < 2 * self.scenes:
            raise ValueError(f"CollectionConfig.seconds={self.seconds} is too short for "
                             f"{self.scenes} scenes of 2 frames at {self.fps} fps")
        if self.host_seconds < self.seconds:
            raise ValueError(f"CollectionConfig.host_seconds={self.host_seconds} must be at "
                             f"least seconds={self.seconds} (a long video hides a short copy)")
        if self.inserted_copies and not self.num_distractors and self.num_queries < 2:
            raise ValueError("CollectionConfig.inserted_copies needs unrelated footage: "
                             "num_distractors >= 1 or num_queries >= 2")


@dataclasses.dataclass(frozen=True)
class Video:
    """One file of the collection.

    Attributes:
        id: its name in the collection (``q000``, ``q000_nd1``, ``q000_ds0``, ``d003``).
        path: the file.
        role: ``"query"`` or ``"database"``.
        source: the source video it was made from (itself for sources).
        contains: source id -> how this video relates to that source's query (``"ND"``/``"DS"``).
        transforms: what was done, in order: ``{"name": ..., "filter": ...}`` and the edit's
            numbers (frames of a trim or splice, place of an inset); sources list their scenes
            as ``{"name": generator, "filter": ...}``.
        duration: its length in seconds.
        segments: where it copies its query (ND and DS derivatives), in seconds: ``{"query_start",
            "query_end", "target_start", "target_end"}`` each.
        family: the source whose look it has: its query for siblings and derivatives, else itself.
    """

    id: str
    path: pathlib.Path
    role: str
    source: str
    contains: dict
    transforms: tuple
    duration: float
    segments: tuple = ()
    family: str = ""


@dataclasses.dataclass(frozen=True)
class Collection:
    """A generated collection: its videos, queries, database and relevance labels."""

    root: pathlib.Path
    config: CollectionConfig
    videos: dict  # id -> Video, queries first, then the database
    queries: tuple
    database: tuple

    def path(self, video_id: str) -> pathlib.Path:
        return self.videos[video_id].path

    def paths(self) -> dict:
        """``{video_id: path}`` for every video, queries included."""
        return {video_id: video.path for video_id, video in self.videos.items()}

    def label(self, query_id: str, video_id: str) -> str:
        """``"ND"``, ``"DS"`` or ``"unrelated"``: how database video ``video_id`` relates to
        query ``query_id``."""
        query = self.videos[query_id]
        return self.videos[video_id].contains.get(query.source, "unrelated")

    def ground_truth(self) -> dict:
        """``{query_id: {database_id: "ND" | "DS" | "unrelated"}}`` over the whole database."""
        return {query: {video: self.label(query, video) for video in self.database}
                for query in self.queries}

    def segments(self) -> list:
        """Every copied segment of a query in a database video, the format of ``segments.json``:
        ``[{"query", "target", "query_start", "query_end", "target_start", "target_end"}]``,
        seconds from the start of each file; a speed change makes the two spans differ."""
        return [{"query": video.source, "target": video.id, **segment}
                for video in self.videos.values() for segment in video.segments]

    def fivr_annotation(self, version: str = "demo") -> dict:
        """The layout of FIVR's annotation file, for ``dns_tf.evaluation.datasets.FIVR``.

        ``FIVR(collection.fivr_annotation(), version="demo")`` evaluates a run on this collection
        with FIVR's protocol (DSVR counts ND and DS; there are no CS/IS videos here).

        Returns:
            ``{version: {"queries": [ids], "database": {ids}},
            "annotation": {query: {"ND": [ids], "DS": [ids]}}}``.
        """
        truth = self.ground_truth()
        annotation = {query: {label: [video for video, value in labels.items() if value == label]
                              for label in ("ND", "DS")}
                      for query, labels in truth.items()}
        return {version: {"queries": list(self.queries), "database": set(self.database)},
                "annotation": annotation}


def generate_collection(out_dir: str | os.PathLike, config: CollectionConfig = CollectionConfig(),
                        progress: bool = True) -> Collection:
    """Generates (or completes) the collection in ``out_dir``; writes ``collection.json`` and
    ``segments.json`` (where each copied segment sits, see :meth:`Collection.segments`).

    Raises:
        RuntimeError: an ffmpeg command failed (the message names the video and quotes ffmpeg).
    """
    root = pathlib.Path(out_dir)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    plans = plan_collection(config, text_logos=_drawtext_works())
    keys = _keys(plans)
    stages = [[plan for plan in plans if not plan.inputs],
              [plan for plan in plans if plan.inputs]]
    with tqdm(total=len(plans), desc="generating videos", unit="video",
              disable=not progress) as bar:
        for stage in stages:  # derivatives read the sources, so sources come first
            _run_all(root, stage, keys, config.workers, bar)
    _write_json(root / "collection.json", _describe(config, plans, keys))
    collection = load_collection(root)
    _write_json(root / "segments.json", collection.segments())
    return collection


def load_collection(out_dir: str | os.PathLike) -> Collection:
    """Reads ``collection.json`` of a generated collection.

    Raises:
        FileNotFoundError: no ``collection.json`` in ``out_dir``.
        ValueError: the file is not a collection description this version can read.
    """
    root = pathlib.Path(out_dir)
    description_path = root / "collection.json"
    if not description_path.is_file():
        raise FileNotFoundError(f"no collection.json in {root} (generate one with "
                                f"`dns-tf generate-videos {root}`)")
    try:
        description = json.loads(description_path.read_text(encoding="utf-8"))
        if description.get("format") != FORMAT_VERSION:
            raise ValueError(f"format {description.get('format')!r}, expected {FORMAT_VERSION}")
        known = {f.name for f in dataclasses.fields(CollectionConfig)}
        config = CollectionConfig(**{k: v for k, v in description["config"].items()
                                     if k in known})
        videos = {video_id: Video(id=video_id, path=root / entry["path"], role=entry["role"],
                                  source=entry["source"], contains=dict(entry["contains"]),
                                  transforms=tuple(entry["transforms"]),
                                  duration=float(entry["duration"]),
                                  segments=tuple(entry["segments"]), family=entry["family"])
                  for video_id, entry in description["videos"].items()}
        queries, database = tuple(description["queries"]), tuple(description["database"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{description_path}: not a readable collection description "
                         f"({type(error).__name__}: {error})") from None
    return Collection(root=root, config=config, videos=videos, queries=queries,
                      database=database)


# --- The plan: every video as an ffmpeg command, a pure function of the configuration -----------

@dataclasses.dataclass(frozen=True)
class VideoPlan:
    """How to make one video: ffmpeg arguments between the binary and the output file."""

    id: str
    role: str
    source: str
    contains: dict
    transforms: tuple
    duration: float
    inputs: tuple  # ids of the collection's videos it reads, in ``-i`` order
    filter_graph: str
    encoding: tuple
    segments: tuple = ()  # where it copies its query: ``_copied`` dicts, in the target's order
    family: str = ""  # the source whose look it has (default: its source)

    @property
    def path(self) -> str:
        return video_path(self.id)

    def arguments(self) -> list:
        args = []  # sources have no input: their generators are in the filter graph
        for video_id in self.inputs:
            args += ["-i", video_path(video_id)]
        return args + ["-filter_complex", self.filter_graph, "-map", "[v]", *self.encoding]


def video_path(video_id: str) -> str:
    """A video's file, relative to the collection's folder."""
    return f"videos/{video_id}.mp4"


def plan_collection(config: CollectionConfig, text_logos: bool = True) -> list:
    """Every video of the collection as a :class:`VideoPlan`: queries, distractors, derivatives.

    Each video draws its random choices from its own generator seeded by ``(seed, id)``, so adding
    distractors or derivatives leaves the other videos unchanged.
    """
    queries = [_source_plan(config, f"q{i:03d}", "query") for i in range(config.num_queries)]
    distractors = [_source_plan(config, f"d{i:03d}", "database")
                   for i in range(config.num_distractors)]
    siblings = {query.id: [_source_plan(config, f"{query.id}_sib{n}", "database", query.id)
                           for n in range(config.siblings)] for query in queries}
    derivatives = []
    for query in queries:
        # Splices and picture-in-picture need another video: a distractor, else another query.
        others = distractors or [q for q in queries if q.id != query.id]
        # Long videos are cut from distractors and other queries' siblings.
        footage = distractors + [sibling for q in queries if q.id != query.id
                                 for sibling in siblings[q.id]] or others
        for n in range(config.near_duplicates):
            derivatives.append(_near_duplicate_plan(config, query, n, text_logos))
        for n in range(config.duplicate_scenes):
            derivatives.append(_duplicate_scene_plan(config, query, n, others))
        for n in range(config.inserted_copies):
            derivatives.append(_inserted_copy_plan(config, query, n, footage))
    return queries + distractors + [s for group in siblings.values() for s in group] + derivatives


def _rng(config: CollectionConfig, video_id: str) -> random.Random:
    return random.Random(f"dns-tf/{config.seed}/{video_id}")


def _encoding(quality: tuple, fps: float) -> tuple:
    """H.264 output options; ``quality`` is ``("-crf", "23")`` or bitrate options."""
    # Single-threaded and bit-exact: the same command gives the same bytes.
    return ("-c:v", "libx264", "-preset", "veryfast", *quality,
            "-pix_fmt", "yuv420p", "-g", str(round(2 * fps)), "-threads", "1",
            "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1",
            "-movflags", "+faststart")


def _finish(width: int, height: int) -> str:
    """Filters closing every chain: a fixed size, square pixels, 4:2:0."""
    return f"scale={width}:{height},setsar=1,format=yuv420p"


# Sources ---------------------------------------------------------------------------------------

def _rgb(rng: random.Random) -> tuple[int, int, int]:
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)


def _color(rng: random.Random) -> str:
    """A random colour in FFmpeg's syntax."""
    return "0x{:02x}{:02x}{:02x}".format(*_rgb(rng))


def _oscillation(rng: random.Random, low: float, high: float) -> str:
    """An expression of time ``t`` sweeping 0..1 and back at a random pace and phase."""
    return f"(0.5+0.5*sin({rng.uniform(low, high):.2f}*t+{rng.uniform(0, 6.28):.2f}))"


def _signed(rng: random.Random, low: float, high: float) -> float:
    """A value of random sign whose magnitude lies in ``[low, high]``."""
    return rng.choice((-1, 1)) * rng.uniform(low, high)


_PALETTES = ("magma", "inferno", "plasma", "viridis", "turbo", "cividis", "solar", "spectral",
             "cool", "heat", "fiery")
_MANDELBROT_SPOTS = ((-0.743643887, 0.131825904), (-0.7453, 0.1127), (-1.25066, 0.02012),
                     (-0.16070135, 1.0375665), (-0.10109636, 0.95628651), (-1.7497, 0.0),
                     (-0.77568377, 0.13646737), (0.2549, 0.0005), (-0.0452, 0.9868))


# Each generator draws what makes its *look* (palette, rule, pattern kind, colours) from ``look`` and
# what makes its *content* (seeds, places, speeds) from ``content``: siblings share the look.

def _mandelbrot(look, content, w, h, fps, frames):
    x, y = content.choice(_MANDELBROT_SPOTS)
    start = content.uniform(0.3, 2.5)
    return (f"mandelbrot=s={w}x{h}:r={fps}:start_x={x}:start_y={y}:start_scale={start:.3f}"
            f":end_scale={start * content.uniform(0.02, 0.3):.5f}:end_pts={frames}"
            f":maxiter={look.choice((64, 128, 256))}"
            f":outer={look.choice(('iteration_count', 'normalized_iteration_count', 'white'))}"
            f":inner={look.choice(('black', 'period', 'convergence', 'mincol'))}")


def _life(look, content, w, h, fps, frames):
    cell = look.choice((2, 3, 4))
    rule = look.choice(("B3/S23", "B36/S23", "B3678/S34678", "B368/S245", "B35678/S5678"))
    return (f"life=s={w // cell}x{h // cell}:r={fps}:rule={rule}"
            f":ratio={content.uniform(0.2, 0.6):.2f}:seed={content.randrange(2**31)}"
            f":mold={look.randrange(0, 40)}"
            f":life_color={_color(look)}:death_color={_color(look)}:mold_color={_color(look)}"
            f",scale={w}:{h}:flags=neighbor")


def _cellular_automaton(look, content, w, h, fps, frames):
    cell = look.choice((2, 3, 4))
    rule = look.choice((18, 30, 45, 54, 57, 73, 90, 105, 110, 150))
    dead, alive = _rgb(look), _rgb(look)
    channels = ":".join(f"{channel}='if(gt(val,127),{alive[i]},{dead[i]})'"
                        for i, channel in enumerate("rgb"))
    return (f"cellauto=s={w // cell}x{h // cell}:r={fps}:rule={rule}"
            f":ratio={content.uniform(0.3, 0.7):.2f}:seed={content.randrange(2**31)}:start_full=1"
            f",scale={w}:{h}:flags=neighbor,format=rgb24,lutrgb={channels}")


def _test_pattern(look, content, w, h, fps, frames):
    # Its content is where the scene's pan and box take it (``_scene``) and its rotation.
    return (f"testsrc2=s={w}x{h}:r={fps},rotate=a='{_signed(content, 0.05, 0.3):.3f}*t'"
            f":fillcolor={_color(look)}")


def _gradients(look, content, w, h, fps, frames):
    count = look.randrange(2, 9)
    colors = ":".join(f"c{i}={_color(look)}" for i in range(count))
    kind = look.choice(("linear", "radial", "circular", "spiral", "square"))
    return (f"gradients=s={w}x{h}:r={fps}:{colors}:n={count}:seed={content.randrange(2**31)}"
            f":speed={content.uniform(0.005, 0.04):.4f}:type={kind}")


def _bars(look, content, w, h, fps, frames):
    pattern = look.choice(("smptebars", "smptehdbars", "pal100bars", "rgbtestsrc", "yuvtestsrc"))
    return (f"{pattern}=s={w}x{h}:r={fps},rotate=a='{_signed(content, 0.1, 0.5):.3f}*t'"
            f":fillcolor={_color(look)}")


def _perlin(look, content, w, h, fps, frames):
    return (f"perlin=s={w}x{h}:r={fps}:octaves={look.randrange(1, 6)}"
            f":persistence={look.uniform(0.3, 0.8):.2f}:xscale={look.uniform(0.5, 3):.2f}"
            f":yscale={look.uniform(0.5, 3):.2f}:tscale={content.uniform(0.2, 2):.2f}"
            f":random_mode=seed:random_seed={content.randrange(2**31)}"
            f",eq=contrast=2,format=yuv444p,pseudocolor=p={look.choice(_PALETTES)}")


def _zone_plate(look, content, w, h, fps, frames):
    return (f"zoneplate=s={w}x{h}:r={fps}:kx={content.randrange(-50, 50)}"
            f":ky={content.randrange(-50, 50)}:kx2={look.randrange(10, 200)}"
            f":ky2={look.randrange(10, 200)}:kt2={content.randrange(0, 8)}"
            f":kxy={content.randrange(-60, 60)}"
            f":kxt={content.randrange(-40, 40)}:kyt={content.randrange(-40, 40)}"
            f":ku={look.randrange(0, 120)}:kv={look.randrange(0, 120)}")


def _sierpinski(look, content, w, h, fps, frames):
    return (f"sierpinski=s={w}x{h}:r={fps}:seed={content.randrange(2**31)}"
            f":jump={look.randrange(1, 10)}:type={look.choice(('carpet', 'triangle'))}")


def _plasma(look, content, w, h, fps, frames):
    # The waves' lengths are its look, their directions and phases its content.
    def wave():
        def term(axis):
            return (f"{axis}/{look.uniform(6, 40):.1f}{content.choice('+-')}"
                    f"T*{content.uniform(0.5, 3):.2f}")
        return f"128+127*sin({term('X')})*cos({term('Y')})"
    return f"nullsrc=s={w}x{h}:r={fps},format=gbrp,geq=r='{wave()}':g='{wave()}':b='{wave()}'"


_GENERATORS: dict[str, Callable] = {
    "mandelbrot": _mandelbrot, "life": _life, "cellauto": _cellular_automaton,
    "testsrc2": _test_pattern, "gradients": _gradients, "bars": _bars, "perlin": _perlin,
    "zoneplate": _zone_plate, "sierpinski": _sierpinski, "plasma": _plasma,
}


def _scene(look: random.Random, content: random.Random, config: CollectionConfig, name: str,
           frames: int, label: str) -> dict:
    """One scene: generator ``name`` panned, hue-rotated, with a moving box.

    The hue, the box's size and colour, and the generator's look come from ``look``; the zoom, the
    paths of the pan and of the box, and the generator's content from ``content``.
    """
    zoom = content.uniform(1.0, 1.5)
    w, h = 2 * round(config.width * zoom / 2), 2 * round(config.height * zoom / 2)
    chain = [_GENERATORS[name](look, content, w, h, config.fps, frames)]
    if zoom > 1.05:
        chain.append(f"crop={config.width}:{config.height}"
                     f":x='(iw-ow)*{_oscillation(content, 0.2, 1)}'"
                     f":y='(ih-oh)*{_oscillation(content, 0.2, 1)}'")
    chain.append(f"hue=h={look.randrange(360)}:s={look.uniform(0.7, 1.5):.2f}")
    if look.random() < 0.6:
        side = look.uniform(0.1, 0.25)
        chain.append(f"drawbox=w=iw*{side:.2f}:h=ih*{side:.2f}:color={_color(look)}@0.85:t=fill"
                     f":x='(iw-w)*{_oscillation(content, 0.5, 2)}'"
                     f":y='(ih-h)*{_oscillation(content, 0.5, 2)}'")
    chain += [_finish(config.width, config.height),
              f"trim=end_frame={frames}", "setpts=PTS-STARTPTS"]
    return {"name": name, "filter": ",".join(chain) + f"[{label}]"}


def _source_plan(config: CollectionConfig, video_id: str, role: str,
                 family: str | None = None) -> VideoPlan:
    """A source video; one of ``family`` (a query's id) has that query's look, other content."""
    look, content = _rng(config, f"{family or video_id}/look"), _rng(config, video_id)
    total = round(config.seconds * config.fps)
    # Scene lengths: one frame each, the rest shared in random proportions.
    weights = [content.uniform(0.6, 1.4) for _ in range(config.scenes)]
    cuts = [round((total - config.scenes) * sum(weights[:i]) / sum(weights))
            for i in range(config.scenes + 1)]
    lengths = [1 + end - start for start, end in zip(cuts, cuts[1:])]
    # Different generators for the scenes of a video (as long as there are enough of them).
    deck = look.sample(sorted(_GENERATORS), len(_GENERATORS))
    scenes = [_scene(look, content, config, deck[i % len(deck)], frames, f"s{i}")
              for i, frames in enumerate(lengths)]
    labels = "".join(f"[s{i}]" for i in range(len(scenes)))
    graph = ";".join(s["filter"] for s in scenes) + f";{labels}concat=n={len(scenes)}:v=1:a=0[v]"
    return VideoPlan(id=video_id, role=role, source=video_id, contains={video_id: "ND"},
                     transforms=tuple(scenes), duration=total / config.fps, inputs=(),
                     filter_graph=graph,
                     encoding=_encoding(("-crf", str(look.randrange(18, 24))), config.fps),
                     family=family or video_id)


# Near-duplicates ---------------------------------------------------------------------------------

_WORDS = ("NEWS", "LIVE", "HD", "TV5", "REC", "CLIP", "SPORT", "VIRAL", "WOW", "24", "BREAKING",
          "EXCLUSIVE")
# Corners for a logo: drawtext's coordinates (text size tw x th), drawbox's (box size w x h).
_CORNERS = (("10", "10", "10", "10"), ("w-tw-10", "10", "iw-w-10", "10"),
            ("10", "h-th-10", "10", "ih-h-10"), ("w-tw-10", "h-th-10", "iw-w-10", "ih-h-10"))


def _crop(rng, config, text_logos):
    keep = rng.uniform(0.7, 0.9)
    return {"filter": f"crop=iw*{keep:.3f}:ih*{keep:.3f}:(iw-ow)*{rng.random():.2f}"
                      f":(ih-oh)*{rng.random():.2f}"}


def _rescale(rng, config, text_logos):
    scale = rng.uniform(0.45, 0.8)
    aspect = rng.uniform(0.85, 1.15)
    return {"filter": f"scale={2 * round(config.width * scale / 2)}"
                      f":{2 * round(config.height * scale * aspect / 2)}"}


def _mirror(rng, config, text_logos):
    return {"filter": "hflip"}


def _colour(rng, config, text_logos):
    return {"filter": f"eq=brightness={rng.uniform(-0.15, 0.15):.3f}"
                      f":contrast={rng.uniform(0.7, 1.4):.3f}"
                      f":saturation={rng.uniform(0.4, 1.6):.3f}:gamma={rng.uniform(0.7, 1.4):.3f}"}


def _hue(rng, config, text_logos):
    return {"filter": f"hue=h={rng.uniform(-60, 60):.1f}:s={rng.uniform(0.5, 1.5):.2f}"}


def _blur(rng, config, text_logos):
    return {"filter": f"gblur=sigma={rng.uniform(0.8, 3):.2f}"}


def _noise(rng, config, text_logos):
    return {"filter": f"noise=alls={rng.randrange(8, 30)}:allf=t+u"
                      f":all_seed={rng.randrange(2**31)}"}


def _logo(rng, config, text_logos):
    text_x, text_y, box_x, box_y = rng.choice(_CORNERS)
    if text_logos:
        return {"filter": f"drawtext=text='{rng.choice(_WORDS)}':fontsize={rng.randrange(14, 32)}"
                          f":fontcolor={_color(rng)}@0.9:box=1:boxcolor={_color(rng)}@0.6"
                          f":boxborderw=4:x={text_x}:y={text_y}"}
    side = rng.uniform(0.12, 0.22)
    return {"filter": f"drawbox=x={box_x}:y={box_y}:w=iw*{side:.2f}:h=ih*{side / 2:.2f}"
                      f":color={_color(rng)}@0.8:t=fill"}


def _border(rng, config, text_logos):
    pad = rng.uniform(1.08, 1.3)
    return {"filter": f"pad=iw*{pad:.3f}:ih*{pad:.3f}:(ow-iw)/2:(oh-ih)/2:color={_color(rng)}"}


def _speed(rng, config, text_logos):
    speed = rng.choice((0.8, 0.9, 1.1, 1.25))
    return {"filter": f"setpts=PTS/{speed},fps={config.fps}", "speed": speed}


def _frame_rate(rng, config, text_logos):
    return {"filter": f"fps={rng.choice((10, 12, 15, 20))}"}


# In the order an editor applies them: geometry, then colour and overlays, then time.
_ND_EDITS: dict[str, Callable] = {
    "crop": _crop, "scale": _rescale, "hflip": _mirror, "colour": _colour, "hue": _hue,
    "blur": _blur, "noise": _noise, "logo": _logo, "border": _border, "speed": _speed,
    "frame_rate": _frame_rate,
}


def _near_duplicate_plan(config, query: VideoPlan, n: int, text_logos: bool) -> VideoPlan:
    video_id = f"{query.id}_nd{n}"
    rng = _rng(config, video_id)
    order = list(_ND_EDITS)
    names = sorted(rng.sample(order, rng.randrange(2, 4)), key=order.index)
    edits = [{"name": name, **_ND_EDITS[name](rng, config, text_logos)} for name in names]
    speed = next((edit["speed"] for edit in edits if "speed" in edit), 1.0)
    if rng.random() < 0.4:
        kbits = rng.choice((60, 100, 150))
        quality = ("-b:v", f"{kbits}k", "-maxrate", f"{kbits}k", "-bufsize", f"{2 * kbits}k")
        name = "low_bitrate"
    else:
        quality, name = ("-crf", str(rng.randrange(20, 36))), "reencode"
    chain = ",".join([edit["filter"] for edit in edits]
                     + ["scale=trunc(iw/2)*2:trunc(ih/2)*2", "setsar=1", "format=yuv420p"])
    frames = round(query.duration * config.fps / speed)
    return VideoPlan(id=video_id, role="database", source=query.id, contains={query.id: "ND"},
                     transforms=(*edits, {"name": name, "filter": " ".join(quality)}),
                     duration=frames / config.fps, inputs=(query.id,),
                     filter_graph=f"[0:v]{chain}[v]", encoding=_encoding(quality, config.fps),
                     segments=(_copied(0.0, query.duration, 0.0, speed),))


# Duplicate scenes --------------------------------------------------------------------------------

_DS_KINDS = ("trim", "splice", "picture_in_picture")


def _segment(rng: random.Random, total: int, low: float, high: float) -> tuple[int, int]:
    """A random run of frames ``[start, end)`` covering a fraction low..high of ``total``."""
    length = max(2, round(total * rng.uniform(low, high)))
    start = rng.randrange(0, total - length + 1)
    return start, start + length


def _duplicate_scene_plan(config, query: VideoPlan, n: int, others: list) -> VideoPlan:
    video_id = f"{query.id}_ds{n}"
    rng = _rng(config, video_id)
    kinds = _DS_KINDS if others else ("trim",)
    # Each query cycles through the kinds from a random first one, so all of them occur.
    first = _rng(config, f"{query.id}_ds").randrange(len(kinds))
    kind = kinds[(first + n) % len(kinds)]
    total = round(query.duration * config.fps)
    finish = _finish(config.width, config.height)
    contains = {query.id: "DS"}
    if kind == "trim":
        start, end = _segment(rng, total, 0.3, 0.6)
        edit = rng.choice(("hue", "colour", "crop", "hflip"))
        edit_filter = _ND_EDITS[edit](rng, config, False)["filter"]
        graph = (f"[0:v]trim=start_frame={start}:end_frame={end},setpts=PTS-STARTPTS,"
                 f"{edit_filter},{finish}[v]")
        transforms = ({"name": "trim", "filter": f"trim=start_frame={start}:end_frame={end}",
                       "start_frame": start, "end_frame": end},
                      {"name": edit, "filter": edit_filter})
        inputs, frames = (query.id,), end - start
        segments = (_copied(start / config.fps, end / config.fps, 0.0),)
    elif kind == "splice":
        other = rng.choice(others)
        start, end = _segment(rng, total, 0.3, 0.5)
        other_start, other_end = _segment(rng, round(other.duration * config.fps), 0.2, 0.4)
        query_first = rng.random() < 0.5
        graph = (f"[0:v]trim=start_frame={start}:end_frame={end},setpts=PTS-STARTPTS,{finish}[q];"
                 f"[1:v]trim=start_frame={other_start}:end_frame={other_end},"
                 f"setpts=PTS-STARTPTS,{finish}[o];"
                 f"{'[q][o]' if query_first else '[o][q]'}concat=n=2:v=1:a=0[v]")
        transforms = ({"name": "splice", "filter": graph, "start_frame": start,
                       "end_frame": end, "other": other.id, "other_start_frame": other_start,
                       "other_end_frame": other_end, "query_first": query_first},)
        inputs, frames = (query.id, other.id), (end - start) + (other_end - other_start)
        contains[other.id] = "DS"
        at = 0 if query_first else other_end - other_start
        segments = (_copied(start / config.fps, end / config.fps, at / config.fps),)
    else:
        other = rng.choice(others)
        scale = rng.uniform(0.55, 0.75)
        w, h = 2 * round(config.width * scale / 2), 2 * round(config.height * scale / 2)
        x, y = rng.randrange(0, config.width - w + 1), rng.randrange(0, config.height - h + 1)
        graph = (f"[1:v]{finish}[background];[0:v]scale={w}:{h},setsar=1[inset];"
                 f"[background][inset]overlay=x={x}:y={y}:shortest=1,format=yuv420p[v]")
        transforms = ({"name": "picture_in_picture", "filter": graph, "other": other.id,
                       "x": x, "y": y, "width": w, "height": h},)
        inputs = (query.id, other.id)
        frames = min(total, round(other.duration * config.fps))
        contains[other.id] = "DS"
        segments = (_copied(0.0, frames / config.fps, 0.0),)
    return VideoPlan(id=video_id, role="database", source=query.id, contains=contains,
                     transforms=transforms, duration=frames / config.fps, inputs=inputs,
                     filter_graph=graph,
                     encoding=_encoding(("-crf", str(rng.randrange(20, 30))), config.fps),
                     segments=segments)


def _inserted_copy_plan(config, query: VideoPlan, n: int, others: list) -> VideoPlan:
    """A long video of unrelated footage with a few seconds of the query cut into it.

    A global descriptor of such a video is mostly the unrelated footage; frame-level matching
    still finds the copy (FIVR's duplicate scenes are often like this).
    """
    video_id = f"{query.id}_in{n}"
    rng = _rng(config, video_id)
    total, host = round(query.duration * config.fps), round(config.host_seconds * config.fps)
    start, end = _segment(rng, total, 0.2, 0.4)
    copy = end - start
    at = rng.randrange(0, host - copy + 1)
    inputs = [query.id]

    def footage(length: int) -> list:
        """Pieces ``(input, start_frame, end_frame)`` of unrelated videos, ``length`` frames."""
        pieces = []
        while length > 0:
            other = rng.choice(others)
            other_total = round(other.duration * config.fps)
            piece = min(length, rng.randrange(min(3 * config.fps, other_total), other_total + 1))
            offset = rng.randrange(0, other_total - piece + 1)
            if other.id not in inputs:
                inputs.append(other.id)
            pieces.append((inputs.index(other.id), offset, offset + piece))
            length -= piece
        return pieces

    order = footage(at) + [(0, start, end)] + footage(host - copy - at)
    finish = _finish(config.width, config.height)
    edit = rng.choice(("hue", "colour", "noise", "blur"))
    edit_filter = _ND_EDITS[edit](rng, config, False)["filter"]
    chains = [f"[{i}:v]trim=start_frame={a}:end_frame={b},setpts=PTS-STARTPTS,{finish}[p{k}]"
              for k, (i, a, b) in enumerate(order)]
    labels = "".join(f"[p{k}]" for k in range(len(order)))
    graph = ";".join(chains) + f";{labels}concat=n={len(order)}:v=1:a=0,{edit_filter},{finish}[v]"
    contains = {query.id: "DS"}
    for other_id in inputs[1:]:
        contains.setdefault(other_id, "DS")
    transforms = ({"name": "inserted_copy", "filter": graph, "start_frame": start,
                   "end_frame": end, "at_frame": at,
                   "pieces": [[inputs[i], a, b] for i, a, b in order]},
                  {"name": edit, "filter": edit_filter})
    return VideoPlan(id=video_id, role="database", source=query.id, contains=contains,
                     transforms=transforms, duration=host / config.fps, inputs=tuple(inputs),
                     filter_graph=graph,
                     encoding=_encoding(("-crf", str(rng.randrange(20, 30))), config.fps),
                     segments=(_copied(start / config.fps, end / config.fps, at / config.fps),))


def _copied(query_start: float, query_end: float, target_start: float,
            speed: float = 1.0) -> dict:
    """Where a copied segment sits: seconds in the query and in the target played at ``speed``."""
    return {"query_start": round(query_start, 6), "query_end": round(query_end, 6),
            "target_start": round(target_start, 6),
            "target_end": round(target_start + (query_end - query_start) / speed, 6)}


# --- Running the plan ----------------------------------------------------------------------------

@functools.cache
def _drawtext_works() -> bool:
    """Whether this ffmpeg build can draw text (it needs fontconfig and a font on the system)."""
    result = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi",
         "-i", "color=s=64x32:d=0.04", "-vf", "drawtext=text=A:fontsize=12", "-f", "null", "-"],
        capture_output=True)
    return result.returncode == 0


def _keys(plans: list) -> dict:
    """A key per video from its command and its inputs' keys: equal keys mean equal files."""
    keys = {}
    for plan in plans:  # inputs come before the videos made from them
        text = json.dumps([plan.arguments(), [keys[i] for i in plan.inputs]])
        keys[plan.id] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return keys


def _is_complete(path: pathlib.Path, key: str) -> bool:
    """Whether ``path`` is a readable video written for ``key``."""
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            return (container.metadata.get("comment") == f"dns-tf:{key}"
                    and bool(container.streams.video) and container.streams.video[0].frames > 0)
    except (av.error.FFmpegError, OSError):
        return False


def _run_all(root: pathlib.Path, plans: list, keys: dict, workers: int, bar) -> None:
    todo = []
    for plan in plans:
        if _is_complete(root / plan.path, keys[plan.id]):
            bar.update()
        else:
            todo.append(plan)
    errors = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_run_ffmpeg, root, plan, keys[plan.id]) for plan in todo]
        for future in concurrent.futures.as_completed(futures):
            try:
                future.result()
            except RuntimeError as error:
                errors.append(error)
            bar.update()
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(todo)} videos failed; first: {errors[0]}")


def _run_ffmpeg(root: pathlib.Path, plan: VideoPlan, key: str) -> None:
    """Runs one video's command into a temporary file, renamed into place once complete."""
    target = root / plan.path
    partial = target.with_name(target.name + ".part")
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
               "-nostdin", "-filter_complex_threads", "1", *plan.arguments(),
               "-metadata", f"comment=dns-tf:{key}", "-f", "mp4", str(partial.relative_to(root))]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg failed to make {plan.id} ({target}): "
                           f"{result.stderr.strip()[-800:]}\ncommand: {' '.join(command)}")
    os.replace(partial, target)


def _describe(config: CollectionConfig, plans: list, keys: dict) -> dict:
    """The content of ``collection.json``."""
    recorded = {k: v for k, v in dataclasses.asdict(config).items() if k != "workers"}
    queries = [p.id for p in plans if p.role == "query"]
    database = [p.id for p in plans if p.role == "database"]
    videos = {p.id: {"path": p.path, "role": p.role, "source": p.source, "contains": p.contains,
                     "duration": p.duration, "transforms": list(p.transforms),
                     "inputs": list(p.inputs), "segments": list(p.segments),
                     "family": p.family or p.source,
                     "key": keys[p.id], "ffmpeg": p.arguments()} for p in plans}
    labels = {q: {v: videos[v]["contains"].get(q, "unrelated") for v in database}
              for q in queries}
    return {"format": FORMAT_VERSION, "config": recorded, "queries": queries,
            "database": database, "labels": labels, "videos": videos}


def _write_json(path: pathlib.Path, content: dict | list) -> None:
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, path)
