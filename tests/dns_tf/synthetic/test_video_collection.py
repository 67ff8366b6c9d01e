"""dns_tf.synthetic.videos: real files that decode, labels that hold, reruns that resume."""

import argparse
import hashlib
import json
import math
import random
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest

from dns_tf import cli
from dns_tf.cli import generate_videos as collection_command
from dns_tf.synthetic import videos as vc
from dns_tf.evaluation.datasets import FIVR
from dns_tf.features.video import load_video, probe_video

TINY = vc.CollectionConfig(seed=0, num_queries=2, near_duplicates=3, duplicate_scenes=3,
                           inserted_copies=2, siblings=1, num_distractors=2, seconds=3,
                           host_seconds=8, width=96, height=64, fps=10)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("collection")
    return vc.generate_collection(root, TINY, progress=False)


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_video_decodes_with_its_planned_duration(tiny):
    assert len(tiny.videos) == 2 + 2 + 2 * (1 + 3 + 3 + 2)
    for video_id, video in tiny.videos.items():
        info = probe_video(video.path)
        assert info["duration"] == pytest.approx(video.duration, abs=1.5 / TINY.fps), video_id
        frames = load_video(video.path, fps=1, resize=64, crop=64)
        assert frames.shape[1:] == (64, 64, 3)
        assert len(frames) == math.ceil(info["duration"] - 1e-6), video_id
        if video.role == "query" or video.id.startswith("d") or "_sib" in video.id:
            assert (info["width"], info["height"], info["fps"]) == (96, 64, 10)


def test_labels_follow_how_each_video_was_made(tiny):
    truth = tiny.ground_truth()
    assert tiny.queries == ("q000", "q001")
    assert set(tiny.database) == set(tiny.videos) - set(tiny.queries)
    for query in tiny.queries:
        assert set(truth[query]) == set(tiny.database)
        by_label = {label: sorted(v for v, value in truth[query].items() if value == label)
                    for label in vc.LABELS}
        assert by_label["ND"] == [f"{query}_nd{i}" for i in range(3)]
        assert by_label["DS"] == sorted([f"{query}_ds{i}" for i in range(3)]
                                        + [f"{query}_in{i}" for i in range(2)])
        assert f"{query}_sib0" in by_label["unrelated"]
        for video_id in by_label["ND"] + by_label["DS"]:
            assert tiny.videos[video_id].source == query
        # Each kind of partial copy occurs once per query with three DS videos.
        kinds = {tiny.videos[f"{query}_ds{i}"].transforms[0]["name"] for i in range(3)}
        assert kinds == {"trim", "splice", "picture_in_picture"}
        for i in range(2):  # a short copy in a long video
            inserted = tiny.videos[f"{query}_in{i}"]
            assert inserted.transforms[0]["name"] == "inserted_copy"
            assert inserted.duration == TINY.host_seconds
            (segment,) = inserted.segments
            assert segment["query_end"] - segment["query_start"] <= 0.4 * TINY.seconds
    description = json.loads((tiny.root / "collection.json").read_text())
    assert description["labels"] == truth


def test_fivr_protocol_scores_the_collection(tiny):
    dataset = FIVR(tiny.fivr_annotation(), version="demo")
    truth = tiny.ground_truth()
    grade = {"ND": 2.0, "DS": 1.0, "unrelated": 0.0}
    perfect = {q: {v: grade[label] for v, label in labels.items()} for q, labels in truth.items()}
    assert dataset.evaluate(perfect)["DSVR"] == pytest.approx(1.0)
    inverted = {q: {v: -score for v, score in scores.items()} for q, scores in perfect.items()}
    assert dataset.evaluate(inverted)["DSVR"] < 0.5


def _frames(path):
    return load_video(path, fps=TINY.fps, resize=None, crop=None).astype(np.float64)


def test_splices_and_insets_really_contain_the_query(tiny):
    for query in tiny.queries:
        source = _frames(tiny.path(query))
        for video_id in tiny.database:
            video = tiny.videos[video_id]
            edit = video.transforms[0]
            if video.source != query or edit["name"] not in ("splice", "picture_in_picture"):
                continue
            frames = _frames(video.path)
            other = _frames(tiny.path(edit["other"]))
            if edit["name"] == "splice":
                part = edit["end_frame"] - edit["start_frame"]
                own = frames[:part] if edit["query_first"] else frames[-part:]
                expected = source[edit["start_frame"]:edit["end_frame"]]
                rest = frames[part:] if edit["query_first"] else frames[:-part]
                foreign = other[edit["other_start_frame"]:edit["other_end_frame"]]
                assert np.abs(own - expected).mean() < 8, video_id
                assert np.abs(rest - foreign).mean() < 8, video_id
            else:
                x, y, w, h = edit["x"], edit["y"], edit["width"], edit["height"]
                inset = frames[:, y:y + h, x:x + w]
                # The inset is the query shrunk: compare block averages at a coarse scale.
                coarse = _block_mean(inset, 4)
                expected = _block_mean(_resize_nearest(source[:len(frames)], h, w), 4)
                unrelated = _block_mean(_resize_nearest(other[:len(frames)], h, w), 4)
                # Resampling fine patterns differently leaves ~15 levels; an unrelated video ~60.
                assert np.abs(coarse - expected).mean() < 20, video_id
                assert np.abs(coarse - expected).mean() < 0.35 * np.abs(coarse - unrelated).mean()


def _resize_nearest(frames, height, width):
    rows = (np.arange(height) * frames.shape[1] / height).astype(int)
    cols = (np.arange(width) * frames.shape[2] / width).astype(int)
    return frames[:, rows][:, :, cols]


def _block_mean(frames, block):
    t, h, w, c = frames.shape
    h, w = h // block * block, w // block * block
    return frames[:, :h, :w].reshape(t, h // block, block, w // block, block, c).mean(axis=(2, 4))


# Edits that move pixels around: frames cannot be compared in place (mirroring is undone).
_GEOMETRIC = {"crop", "scale", "border", "picture_in_picture"}


def _luma_patterns(path, mirrored=False):
    """Per frame at the collection's rate: 4x4-block luma, zero mean, unit norm. Correlations of
    these survive hue, contrast, noise and blur, not a wrong time."""
    luma = _frames(path) @ np.array([0.299, 0.587, 0.114])
    if mirrored:
        luma = luma[:, :, ::-1]
    t, h, w = luma.shape
    blocks = luma[:, :h // 4 * 4, :w // 4 * 4].reshape(t, h // 4, 4, w // 4, 4).mean(axis=(2, 4))
    blocks = blocks.reshape(t, -1) - blocks.reshape(t, -1).mean(axis=1, keepdims=True)
    return blocks / (np.linalg.norm(blocks, axis=1, keepdims=True) + 1e-9)


def test_segments_record_where_each_copy_sits(tiny):
    segments = tiny.segments()
    assert json.loads((tiny.root / "segments.json").read_text()) == segments
    copies = {v for q, labels in tiny.ground_truth().items() for v, label in labels.items()
              if label != "unrelated"}
    assert {s["target"] for s in segments} == copies
    checked = set()
    for segment in segments:
        target = tiny.videos[segment["target"]]
        assert segment["query"] == target.source
        assert 0 <= segment["query_start"] < segment["query_end"] <= TINY.seconds + 1e-6
        assert 0 <= segment["target_start"] < segment["target_end"] <= target.duration + 0.1
        names = {edit["name"] for edit in target.transforms}
        if names & _GEOMETRIC:
            continue
        # Frame i of the query at time i / fps sits at the mapped time of the target.
        query = _luma_patterns(tiny.path(segment["query"]))
        video = _luma_patterns(target.path, mirrored="hflip" in names)
        rate = ((segment["target_end"] - segment["target_start"])
                / (segment["query_end"] - segment["query_start"]))
        rows = np.arange(round(segment["query_start"] * TINY.fps),
                         round(segment["query_end"] * TINY.fps))
        mapped = np.round((segment["target_start"]
                           + (rows / TINY.fps - segment["query_start"]) * rate) * TINY.fps)
        mapped = np.minimum(mapped.astype(int), len(video) - 1)

        def correlation(shift):
            columns = mapped + shift
            inside = (columns >= 0) & (columns < len(video))
            return (query[rows[inside]] * video[columns[inside]]).sum(axis=1).mean()

        assert correlation(0) > 0.85, (segment, correlation(0))
        for wrong in (-TINY.fps, TINY.fps):  # a second off: clearly worse
            if 0 <= mapped[0] + wrong and mapped[-1] + wrong < len(video):
                assert correlation(wrong) < correlation(0) - 0.3, (segment, wrong)
        checked |= names
    # Whole videos, trims or splices, long videos, mirrored, re-timed: all were checked.
    assert {"splice", "inserted_copy", "hflip", "frame_rate"} <= checked, checked


def test_speed_changes_scale_the_target_span():
    plans = vc.plan_collection(vc.CollectionConfig(**{**vars(TINY), "near_duplicates": 12}))
    speeds = 0
    for plan in plans:
        edit = next((edit for edit in plan.transforms if edit.get("name") == "speed"), None)
        if edit is not None:
            (segment,) = plan.segments
            assert segment["target_end"] == pytest.approx(TINY.seconds / edit["speed"])
            assert plan.duration == pytest.approx(TINY.seconds / edit["speed"], abs=0.5 / TINY.fps)
            speeds += 1
    assert speeds > 0


def test_siblings_share_their_querys_look_not_its_content():
    plans = {p.id: p for p in vc.plan_collection(TINY)}
    query, sibling, other = plans["q000"], plans["q000_sib0"], plans["q001"]
    assert sibling.role == "database" and sibling.source == "q000_sib0"
    scenes = [scene["name"] for scene in query.transforms]
    assert [scene["name"] for scene in sibling.transforms] == scenes
    assert [scene["name"] for scene in other.transforms] != scenes
    for mine, theirs in zip(query.transforms, sibling.transforms):
        hue = [part for part in mine["filter"].split(",") if part.startswith("hue=")]
        assert hue and all(part in theirs["filter"].split(",") for part in hue)
        assert mine["filter"] != theirs["filter"]


def test_near_duplicates_differ_from_their_source_but_stay_closer_than_unrelated(tiny):
    def thumbnails(path):  # 4x4 colour layout per second, robust to most edits
        frames = load_video(path, fps=1, resize=64, crop=64).astype(np.float64)
        return _block_mean(frames, 16)[:3]

    for query in tiny.queries:
        source = thumbnails(tiny.path(query))
        unrelated = [thumbnails(tiny.path(v)) for v in tiny.database if v.startswith("d")]
        for n in range(3):
            video = tiny.videos[f"{query}_nd{n}"]
            near = thumbnails(video.path)
            if any(edit["name"] in ("hflip", "speed", "hue") for edit in video.transforms):
                continue  # mirrored, re-timed or hue-rotated: a colour layout cannot tell
            distance = np.abs(near[:len(source)] - source[:len(near)]).mean()
            assert 0 < distance < min(np.abs(u - source).mean() for u in unrelated)


def test_rerun_skips_complete_files_and_redoes_missing_or_damaged_ones(tiny):
    before = {v.id: v.path.stat().st_mtime_ns for v in tiny.videos.values()}
    digests = _digests(tiny.root)
    missing, damaged = tiny.path("q000_nd1"), tiny.path("d001")
    missing.unlink()
    damaged.write_bytes(damaged.read_bytes()[:500])
    again = vc.generate_collection(tiny.root, TINY, progress=False)
    after = {v.id: v.path.stat().st_mtime_ns for v in again.videos.values()}
    redone = {video_id for video_id in before if before[video_id] != after[video_id]}
    assert redone == {"q000_nd1", "d001"}
    assert _digests(tiny.root) == digests  # the redone files are the same bytes as before
    assert not list(tiny.root.rglob("*.part"))


def test_same_seed_gives_the_same_files_and_labels(tiny, tmp_path):
    copy = vc.generate_collection(tmp_path, TINY, progress=False)
    assert (copy.root / "collection.json").read_bytes() == \
        (tiny.root / "collection.json").read_bytes()
    assert _digests(copy.root) == _digests(tiny.root)


def test_plans_depend_on_the_seed_and_each_video_only_on_its_own_choices():
    plans = {p.id: p for p in vc.plan_collection(TINY)}
    other_seed = {p.id: p for p in vc.plan_collection(vc.CollectionConfig(**{
        **vars(TINY), "seed": 1}))}
    assert plans.keys() == other_seed.keys()
    assert all(plans[i].arguments() != other_seed[i].arguments() for i in plans)
    more = {p.id: p for p in vc.plan_collection(vc.CollectionConfig(**{
        **vars(TINY), "num_distractors": 4, "near_duplicates": 4}))}
    for video_id in ("q000", "q001", "d000", "d001", "q000_nd0", "q001_nd2"):
        assert more[video_id].arguments() == plans[video_id].arguments()


def _ffmpeg_accepts(graph: str, inputs: int = 0) -> subprocess.CompletedProcess:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error"]
    for _ in range(inputs):
        command += ["-f", "lavfi", "-i", "testsrc2=s=96x64:r=10:d=0.3"]
    return subprocess.run(command + ["-filter_complex", graph, "-map", "[v]", "-frames:v", "3",
                                     "-f", "null", "-"], capture_output=True, text=True)


@pytest.mark.parametrize("name", sorted(vc._GENERATORS))
def test_every_scene_generator_renders(name):
    scene = vc._scene(random.Random(name), random.Random(1), TINY, name, 3, "v")
    result = _ffmpeg_accepts(scene["filter"])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", sorted(vc._ND_EDITS))
@pytest.mark.parametrize("text_logos", [True, False])
def test_every_near_duplicate_edit_is_a_working_filter(name, text_logos):
    if text_logos and not vc._drawtext_works():
        pytest.skip("this ffmpeg cannot draw text here; logos fall back to boxes")
    edit = vc._ND_EDITS[name](random.Random(name), TINY, text_logos)
    result = _ffmpeg_accepts(f"[0:v]{edit['filter']}[v]", inputs=1)
    assert result.returncode == 0, result.stderr


def test_a_failing_command_names_the_video_and_leaves_no_file(tmp_path, monkeypatch):
    broken = vc.VideoPlan(id="q000", role="query", source="q000", contains={"q000": "ND"},
                          transforms=(), duration=1.0, inputs=(),
                          filter_graph="no_such_filter=s=8x8[v]",
                          encoding=vc._encoding(("-crf", "23"), 10))
    monkeypatch.setattr(vc, "plan_collection", lambda config, text_logos=True: [broken])
    with pytest.raises(RuntimeError, match="q000"):
        vc.generate_collection(tmp_path, TINY, progress=False)
    assert not list((tmp_path / "videos").iterdir())


def test_load_collection_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        vc.load_collection(tmp_path)
    (tmp_path / "collection.json").write_text('{"format": 1, "videos": {}}')
    with pytest.raises(ValueError, match="collection.json"):
        vc.load_collection(tmp_path)


def test_invalid_configuration_is_refused():
    with pytest.raises(ValueError, match="even"):
        vc.CollectionConfig(width=321)
    with pytest.raises(ValueError, match="num_distractors"):
        vc.CollectionConfig(num_distractors=-1)


def test_cli_generate_videos(tiny, capsys):
    assert "generate-videos" in cli.COMMANDS
    parser = argparse.ArgumentParser()
    collection_command.register(parser.add_subparsers(dest="command"))
    flags = [f"--{name}={value}" for name, value in vars(TINY).items()]
    args = parser.parse_args(["generate-videos", str(tiny.root), "--quiet", *flags])
    assert args.func(args) == 0
    assert "22 videos" in capsys.readouterr().out
    bad = parser.parse_args(["generate-videos", str(tiny.root), "--width", "95"])
    assert bad.func(bad) == 2
