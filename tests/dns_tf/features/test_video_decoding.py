"""dns_tf.features.video: which frames come out, their content and shape, every kind of bad file."""

import logging
import math
import pickle
import subprocess
import tracemalloc

import av
import imageio_ffmpeg
import numpy as np
import pytest
from videos import frame_index, make_audio, make_video, second_color

from dns_tf.features.video import (MAX_VIDEO_SECONDS, VideoDecodeError, iter_frames, load_video,
                                   probe_video)

NATIVE = {"resize": None, "crop": None}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Small videos shared by the tests of this module, made once."""
    folder = tmp_path_factory.mktemp("videos")
    return {
        "25fps.mp4": make_video(folder / "25fps.mp4", 4, 25, pattern="frames"),
        "30fps.ts": make_video(folder / "30fps.ts", 3, 30, pattern="frames"),
        "12.5fps.webm": make_video(folder / "12.5fps.webm", 4, 12.5, pattern="frames",
                                   codec="libvpx-vp9"),
        "2.5s.mp4": make_video(folder / "2.5s.mp4", 2.5, 10, pattern="frames"),
        "seconds.mp4": make_video(folder / "seconds.mp4", 5, 25, pattern="seconds"),
        "landscape.mp4": make_video(folder / "landscape.mp4", 1, 5, size=(100, 64)),
        "portrait.mp4": make_video(folder / "portrait.mp4", 1, 5, size=(64, 100)),
    }


@pytest.mark.parametrize("name, video_fps, seconds", [
    ("25fps.mp4", 25, 4), ("30fps.ts", 30, 3), ("12.5fps.webm", 12.5, 4), ("2.5s.mp4", 10, 2.5)])
@pytest.mark.parametrize("fps", [1.0, 2.0])
def test_samples_the_frame_on_screen_every_1_over_fps_seconds(videos, name, video_fps, seconds,
                                                               fps):
    frames = load_video(videos[name], fps=fps, **NATIVE)
    assert len(frames) == math.ceil(seconds * fps)
    # The frame on screen at k / fps is number floor(k / fps * video_fps).
    expected = [math.floor(k / fps * video_fps + 1e-9) % 50 for k in range(len(frames))]
    assert [frame_index(frame) for frame in frames] == expected


def test_timestamps_count_from_the_first_frame_when_the_stream_starts_late(videos):
    with av.open(str(videos["30fps.ts"])) as container:
        assert container.streams.video[0].start_time > 0  # MPEG-TS starts at 1.4 s
    frames = load_video(videos["30fps.ts"], fps=1, **NATIVE)
    assert [frame_index(frame) for frame in frames] == [0, 30 % 50, 60 % 50]


def test_variable_frame_rate_follows_timestamps_not_frame_counts(tmp_path):
    # 10 fps, but frames from number 10 on are shown 0.5 s later: frame 9 stays on screen over
    # [0.9, 1.5), frame 10 is at 1.5 s, frame 15 at 2.0 s, the last (19) ends at 2.5 s.
    path = make_video(tmp_path / "vfr.mkv", 2.5, 10, pattern="frames",
                      filters=r"setpts='(N+5*gte(N\,10))/(10*TB)'",
                      output_args=("-fps_mode", "passthrough"))
    frames = [frame_index(f) for f in iter_frames(path, fps=2, **NATIVE)]
    assert frames == [0, 5, 9, 10, 15]
    # Counting frames instead would have taken frames 0, 5, 10, 15 at 0, 0.5, 1.0, 1.5 s.


def test_frame_content_matches_the_second_it_was_shown(videos):
    frames = load_video(videos["seconds.mp4"], resize=64, crop=48)
    assert frames.shape == (5, 48, 48, 3) and frames.dtype == np.uint8
    palette = np.array([second_color(k) for k in range(5)], dtype=np.float64)
    for second, frame in enumerate(frames):
        mean = frame.reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(mean, palette[second], atol=6)
        assert np.argmin(np.abs(palette - mean).sum(axis=1)) == second


@pytest.mark.parametrize("name, resize, crop, shape", [
    ("landscape.mp4", 32, 32, (32, 32, 3)),
    ("landscape.mp4", 32, None, (32, 50, 3)),      # 100x64 -> 50x32
    ("landscape.mp4", 50, None, (50, 78, 3)),      # 100 * 50 / 64 = 78.1 -> 78
    ("landscape.mp4", None, 40, (40, 40, 3)),
    ("landscape.mp4", None, None, (64, 100, 3)),
    ("portrait.mp4", 32, 32, (32, 32, 3)),
    ("portrait.mp4", 32, None, (50, 32, 3)),
    ("portrait.mp4", 256, 224, (224, 224, 3)),    # the paper's setting, upscaling
])
def test_resize_shorter_side_then_centre_crop(videos, name, resize, crop, shape):
    frames = load_video(videos[name], resize=resize, crop=crop)
    assert frames.shape == (1, *shape)


def test_crop_takes_the_centre_of_the_frame(videos):
    full = load_video(videos["landscape.mp4"], **NATIVE)[0]
    cropped = load_video(videos["landscape.mp4"], resize=None, crop=40)[0]
    np.testing.assert_array_equal(cropped, full[12:52, 30:70])


def test_resize_is_smooth_and_keeps_the_picture(videos):
    full = load_video(videos["landscape.mp4"], **NATIVE)[0].astype(np.float64)
    doubled = load_video(videos["landscape.mp4"], resize=128, crop=None)[0].astype(np.float64)
    assert doubled.shape == (128, 200, 3)
    halved_back = doubled.reshape(64, 2, 100, 2, 3).mean(axis=(1, 3))
    assert np.abs(halved_back - full).mean() < 8  # testsrc2 has sharp edges; bicubic keeps them


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_display_rotation_is_applied_like_ffmpeg(tmp_path, videos, rotation):
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    rotated = tmp_path / "rotated.mp4"
    subprocess.run([ffmpeg, "-loglevel", "error", "-display_rotation", str(rotation),
                    "-i", str(videos["landscape.mp4"]), "-c", "copy", str(rotated)], check=True)
    upright = subprocess.run([ffmpeg, "-loglevel", "error", "-i", str(rotated), "-frames:v", "1",
                              "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                             check=True, capture_output=True).stdout
    info = probe_video(rotated)
    expected_size = (100, 64) if rotation == 180 else (64, 100)
    assert (info["width"], info["height"]) == expected_size
    frame = load_video(rotated, max_frames=1, **NATIVE)[0]
    expected = np.frombuffer(upright, np.uint8).reshape(info["height"], info["width"], 3)
    np.testing.assert_array_equal(frame, expected)


def test_max_frames_caps_the_output(videos):
    assert load_video(videos["25fps.mp4"], fps=2, max_frames=3, **NATIVE).shape[0] == 3
    assert load_video(videos["25fps.mp4"], fps=1, max_frames=100, **NATIVE).shape[0] == 4


def test_streaming_holds_one_frame_at_a_time(tmp_path):
    path = make_video(tmp_path / "long.mp4", 10, 25, pattern="frames")
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_frames(path, fps=25))  # 250 frames [224, 224, 3]: 37 MB
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 250
    assert peak < 2 * 224 * 224 * 3 + 1_000_000


@pytest.mark.parametrize("name, expected", [
    ("25fps.mp4", {"duration": 4.0, "fps": 25.0, "width": 64, "height": 48, "frames": 100}),
    ("30fps.ts", {"duration": 3.0, "fps": 30.0, "width": 64, "height": 48, "frames": 90}),
    ("12.5fps.webm", {"duration": 4.0, "fps": 12.5, "width": 64, "height": 48, "frames": 50}),
    ("portrait.mp4", {"duration": 1.0, "fps": 5.0, "width": 64, "height": 100, "frames": 5}),
])
def test_probe_reports_duration_rate_size_and_frame_count(videos, name, expected):
    info = probe_video(videos[name])
    assert info.keys() == expected.keys()
    assert info["duration"] == pytest.approx(expected.pop("duration"), abs=0.02)
    assert {key: info[key] for key in expected} == expected


def _bad_files(folder, good, good_index_first):
    """Every kind of file that is not a decodable video, with words its error must contain."""
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000,
                                                                        dtype=np.uint8).tobytes())
    (folder / "notes.txt").write_text("not a video\n")
    # Without its index (the moov atom sits at the end of the file) an MP4 holds no stream.
    (folder / "no_index.mp4").write_bytes(good.read_bytes()[:2000])
    # With the index first, a file cut short holds a stream but not one whole frame.
    (folder / "truncated.mp4").write_bytes(good_index_first.read_bytes()[:1500])
    # Container intact, every compressed frame replaced by noise.
    data = bytearray(good_index_first.read_bytes())
    payload = data.find(b"mdat") + 4
    data[payload:] = np.random.default_rng(1).integers(0, 256, len(data) - payload,
                                                       dtype=np.uint8).tobytes()
    (folder / "garbled.mp4").write_bytes(bytes(data))
    (folder / "a_directory.mp4").mkdir()
    return {
        "missing.mp4": "not found",
        "empty.mp4": "empty",
        "noise.mp4": "not a video file",
        "notes.txt": "not a video file",
        "no_index.mp4": "incomplete header",
        "truncated.mp4": "no decodable video frame",
        "audio.m4a": "no video stream (file holds: audio)",
        "garbled.mp4": "no decodable video frame",
        "a_directory.mp4": "not a regular file",
    }


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    make_audio(folder / "audio.m4a", 1)
    good = make_video(folder / "good.mp4", 2, 25)
    index_first = make_video(folder / "index_first.mp4", 2, 25,
                             output_args=("-movflags", "+faststart"))
    return folder, _bad_files(folder, good, index_first)


@pytest.mark.parametrize("name", ["missing.mp4", "empty.mp4", "noise.mp4", "notes.txt",
                                  "no_index.mp4", "truncated.mp4", "audio.m4a", "garbled.mp4",
                                  "a_directory.mp4"])
@pytest.mark.parametrize("reader", [load_video, probe_video, lambda p: next(iter_frames(p))])
def test_bad_files_raise_a_decode_error_naming_file_and_reason(bad_files, name, reader):
    folder, reasons = bad_files
    path = folder / name
    with pytest.raises(VideoDecodeError) as caught:
        reader(path)
    error = caught.value
    assert error.path == str(path)
    assert reasons[name] in error.reason
    assert str(path) in str(error) and error.reason in str(error)
    assert "Traceback" not in str(error)
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_damaged_packets_are_skipped_and_logged(tmp_path, caplog):
    path = make_video(tmp_path / "intra.mp4", 4, 25, pattern="frames", output_args=("-g", "1"))
    data = bytearray(path.read_bytes())
    middle, span = len(data) // 2, len(data) // 10
    data[middle:middle + span] = bytes(span)
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="dns_tf.features.video"):
        frames = load_video(damaged, fps=25, **NATIVE)
    assert "damaged packets" in caplog.text and str(damaged) in caplog.text
    indices = [frame_index(frame) for frame in frames]
    # The timeline is kept (a lost frame leaves the previous one on screen), both ends survive.
    assert len(frames) == 100
    assert indices[:10] == list(range(10)) and indices[-10:] == list(range(40, 50))
    assert indices != [n % 50 for n in range(100)]


@pytest.mark.parametrize("kwargs", [{"fps": 0}, {"resize": 0}, {"crop": 300},
                                    {"max_frames": 0}])
def test_invalid_arguments_are_rejected_when_called(videos, kwargs):
    with pytest.raises(ValueError):
        iter_frames(videos["25fps.mp4"], **kwargs)


def test_crop_larger_than_the_frame_is_a_clear_error(videos):
    with pytest.raises(VideoDecodeError, match="smaller than the crop size 224"):
        load_video(videos["landscape.mp4"], resize=None, crop=224)


def test_a_huge_timestamp_gap_is_refused_before_frames_are_made(tmp_path):
    """Two frames 200,000 s apart (a 1.4 KB mkv declaring 200,001 s): more than MAX_VIDEO_SECONDS,
    so a clear error instead of 200,000 frames in memory; max_frames takes its first frames."""
    path = make_video(tmp_path / "gap.mkv", seconds=400_000, fps=1, pattern="color",
                      output_args=("-vf", "setpts=N*200000/TB", "-fps_mode", "passthrough",
                                   "-frames:v", "2"))
    assert path.stat().st_size < 12_000 and 200_000 > MAX_VIDEO_SECONDS
    tracemalloc.start()
    with pytest.raises(VideoDecodeError, match=f"gap.mkv.*more than {MAX_VIDEO_SECONDS} s.*"
                                               f"max_frames"):
        load_video(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * 2**20  # not one 224x224 frame per second of the gap
    frames = list(iter_frames(path, max_frames=5))
    assert len(frames) == 5 and all(f.shape == (224, 224, 3) for f in frames)
