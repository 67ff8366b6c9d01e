"""Tiny test videos made with the ffmpeg binary of imageio-ffmpeg.

    from videos import make_video, second_color, frame_index   # tests/ is on sys.path

    make_video(tmp_path / "a.mp4", seconds=3, fps=25)                        # testsrc2, 64x48
    make_video(tmp_path / "b.mp4", seconds=4, fps=25, pattern="seconds")   # colour second_color(k)
    make_video(tmp_path / "c.webm", seconds=2, fps=10, pattern="frames", codec="libvpx-vp9")

Patterns: ``"seconds"`` (solid colour, ``second_color(k)`` during second k), ``"frames"`` (solid
grey encoding the frame number, read back with ``frame_index``), or any FFmpeg lavfi video source
(``testsrc2``, ``mandelbrot``, ``smptebars``, ...). The container follows the file suffix.
Encoding is single-threaded and bit-exact: the same arguments give the same bytes.
"""

from __future__ import annotations

import pathlib
import subprocess

import imageio_ffmpeg
import numpy as np

_GREY_STEP = 5
_GREY_LEVELS = 50  # frame numbers are encoded modulo this


def second_color(second: int, seed: int = 0) -> tuple[int, int, int]:
    """The RGB colour of the ``"seconds"`` pattern during second ``second``."""
    return ((37 + 89 * second + 13 * seed) % 256, (201 + 53 * second + 7 * seed) % 256,
            (90 + 151 * second + 3 * seed) % 256)


def frame_index(image: np.ndarray) -> int:
    """The frame number (modulo 50) of a decoded frame ``[H, W, 3]`` of the ``"frames"`` pattern."""
    return int(round((float(image.mean()) - 2) / _GREY_STEP)) % _GREY_LEVELS


def make_video(path, seconds: float, fps: float, size: tuple[int, int] = (64, 48),
               pattern: str = "testsrc2", codec: str = "libx264", seed: int = 0, *,
               filters: str | None = None, output_args: tuple[str, ...] = ()) -> pathlib.Path:
    """Writes a video of ``seconds`` at ``fps`` frames per second and ``size`` = (W, H) pixels.

    Args:
        filters: extra FFmpeg filters applied after the pattern (e.g. ``"setpts=..."``).
        output_args: extra FFmpeg output options (e.g. ``("-fps_mode", "passthrough")``).
    """
    path = pathlib.Path(path)
    width, height = size
    if pattern == "seconds":
        second = f"floor(N/{fps}+1e-6)"
        r, g, b = (f"mod({base}+{step}*{second}+{seed_step * seed},256)"
                   for base, step, seed_step in ((37, 89, 13), (201, 53, 7), (90, 151, 3)))
        source = f"color=s={width}x{height}:r={fps},format=gbrp,geq=r='{r}':g='{g}':b='{b}'"
    elif pattern == "frames":
        grey = f"2+{_GREY_STEP}*mod(N,{_GREY_LEVELS})"
        source = f"color=s={width}x{height}:r={fps},format=gray,geq=lum='{grey}'"
    else:
        source = f"{pattern}=s={width}x{height}:r={fps}"
    if filters:
        source += "," + filters
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
               "-f", "lavfi", "-i", source, "-t", str(seconds), "-c:v", codec,
               "-pix_fmt", "yuv420p", "-threads", "1", "-fflags", "+bitexact",
               "-flags:v", "+bitexact", "-map_metadata", "-1"]
    if codec == "libx264":
        command += ["-preset", "ultrafast", "-crf", "12"]
    command += [*output_args, str(path)]
    subprocess.run(command, check=True, capture_output=True)
    return path


def make_audio(path, seconds: float) -> pathlib.Path:
    """Writes an audio-only file (a sine tone) of ``seconds``."""
    path = pathlib.Path(path)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", f"sine=d={seconds}", "-fflags", "+bitexact", str(path)],
                   check=True, capture_output=True)
    return path
