"""Real short videos with copied segments at known times, made with FFmpeg, for localisation tests.

    from copies import make_copies   # tests/ is on sys.path
    query, derivatives = make_copies(tmp_path)   # paths, and {path: [Segment, ...]} ground truth

The query is 16 s of four lavfi scenes (moving test pattern, Game of Life, Mandelbrot zoom,
cellular automaton); each derivative reuses parts of it (trimmed into unrelated footage, at 2x and
0.5x speed, spliced, shown picture-in-picture), 25 fps, 160x120. Times are exact from the plan.
"""

from __future__ import annotations

import pathlib
import subprocess

import imageio_ffmpeg

from dns_tf.localization.segments import Segment

SIZE = "160x120"
FPS = 25
QUERY_SCENES = ("testsrc2=s={size}:r={fps}", "life=s={size}:r={fps}:mold=10:ratio=0.5:seed=3",
                "mandelbrot=s={size}:r={fps}", "cellauto=s={size}:r={fps}:rule=110:seed=4")
OTHER_SCENES = ("smptebars=s={size}:r={fps},hue=H=t", "rgbtestsrc=s={size}:r={fps},rotate=a=t",
                "life=s={size}:r={fps}:seed=11:ratio=0.3")


def _run(*arguments: str) -> None:
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
                    *arguments], check=True, capture_output=True)


def _encode(graph: str, inputs: list, path: pathlib.Path) -> pathlib.Path:
    command = []
    for source in inputs:
        command += ["-i", str(source)] if isinstance(source, pathlib.Path) else \
            ["-f", "lavfi", "-i", source]
    _run(*command, "-filter_complex", graph, "-map", "[v]", "-r", str(FPS), "-c:v", "libx264",
         "-preset", "ultrafast", "-crf", "18", "-pix_fmt", "yuv420p", "-threads", "1", str(path))
    return path


def _scenes(templates, seconds: float) -> tuple[list, str]:
    sources = [template.format(size=SIZE, fps=FPS) for template in templates]
    parts = "".join(f"[{i}:v]trim=duration={seconds},setpts=PTS-STARTPTS,format=yuv420p[s{i}];"
                    for i in range(len(sources)))
    labels = "".join(f"[s{i}]" for i in range(len(sources)))
    return sources, parts + f"{labels}concat=n={len(sources)}:v=1:a=0[v]"


def make_copies(folder) -> tuple[pathlib.Path, dict[pathlib.Path, list[Segment]]]:
    folder = pathlib.Path(folder)
    sources, graph = _scenes(QUERY_SCENES, 4)
    query = _encode(graph, sources, folder / "query.mp4")
    sources, graph = _scenes(OTHER_SCENES, 4)
    other = _encode(graph, sources, folder / "other.mp4")      # 12 s of unrelated footage

    def cut(label, start, end, speed=1.0):
        return (f"trim={start}:{end},setpts=(PTS-STARTPTS)/{speed},"
                f"fps={FPS},format=yuv420p[{label}]")

    plans = {
        # 3 s unrelated, query 4-12 s, 2 s unrelated
        "trim": (f"[1:v]{cut('a', 0, 3)};[0:v]{cut('b', 4, 12)};[1:v]{cut('c', 5, 7)};"
                 "[a][b][c]concat=n=3:v=1:a=0[v]", [Segment(4, 12, 3, 11)]),
        # the whole query twice as fast, then 3 s unrelated
        "fast": (f"[0:v]{cut('a', 0, 16, 2)};[1:v]{cut('b', 0, 3)};[a][b]concat=n=2:v=1:a=0[v]",
                 [Segment(0, 16, 0, 8)]),
        # 2 s unrelated, query 2-10 s at half speed
        "slow": (f"[1:v]{cut('a', 6, 8)};[0:v]{cut('b', 2, 10, 0.5)};[a][b]concat=n=2:v=1:a=0[v]",
                 [Segment(2, 10, 2, 18)]),
        # query 9-15 s, 4 s unrelated, query 0-5 s: two segments, swapped
        "splice": (f"[0:v]{cut('a', 9, 15)};[1:v]{cut('b', 0, 4)};[0:v]{cut('c', 0, 5)};"
                   "[a][b][c]concat=n=3:v=1:a=0[v]",
                   [Segment(9, 15, 0, 6), Segment(0, 5, 10, 15)]),
        # query 0-12 s at 60% size over unrelated footage
        "pip": (f"[1:v]{cut('a', 0, 12)};[0:v]trim=0:12,setpts=PTS-STARTPTS,scale=96:72[b];"
                "[a][b]overlay=x=40:y=30,format=yuv420p[v]", [Segment(0, 12, 0, 12)]),
    }
    derivatives = {}
    for name, (graph, truth) in plans.items():
        derivatives[_encode(graph, [query, other], folder / f"{name}.mp4")] = truth
    return query, derivatives
