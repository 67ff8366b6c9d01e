"""Localisation of copied segments: the temporal network on synthetic matrices with known segments,
the metrics on hand-computed cases, the files, the picture and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dns_tf.cli import main as cli_main
from dns_tf.localization import (LocalizationConfig, Segment, SegmentFormatError,
                                 localization_metrics, localize, localize_matrix,
                                 plot_localization, read_segments, segment_f1, segment_micro_ap,
                                 temporal_iou, write_segments)
from dns_tf.localization.synthetic import synthetic_matrix

# name -> (query frames, target frames, copied segments); 1 frame per second.
CASES = {
    "identity": (20, 20, [Segment(0, 20, 0, 20)]),
    "trimmed both ends": (30, 20, [Segment(5, 20, 3, 18)]),
    "2x faster": (30, 20, [Segment(4, 24, 5, 15)]),
    "0.5x slower": (20, 40, [Segment(2, 14, 5, 29)]),
    "two segments swapped": (40, 50, [Segment(2, 12, 30, 40), Segment(20, 35, 5, 20)]),
    "one part reused twice": (20, 50, [Segment(2, 12, 5, 15), Segment(2, 12, 30, 40)]),
    "long videos": (200, 150, [Segment(30, 130, 20, 120)]),
}
# (match similarity, noise): clean copies, and weak noisy ones (a picture-in-picture or a heavy
# re-encode: matches 3 noise deviations above the background).
CONDITIONS = {"clean": (0.8, 0.05), "weak": (0.5, 0.1)}


def boxes(segments):
    return [(s.query_start, s.query_end, s.target_start, s.target_end) for s in segments]


@pytest.mark.parametrize("condition", CONDITIONS)
@pytest.mark.parametrize("case", CASES)
def test_finds_every_copied_segment_and_nothing_else(case, condition):
    query_frames, target_frames, truth = CASES[case]
    match, noise = CONDITIONS[condition]
    similarity, truth = synthetic_matrix(query_frames, target_frames, truth, match=match,
                                         background=0.2, noise=noise, seed=3)
    found = localize_matrix(similarity)
    assert len(found) == len(truth), boxes(found)
    metrics = segment_f1({("q", "t"): truth}, {("q", "t"): found})
    assert metrics["f1"] == 1.0, boxes(found)
    if condition == "clean":  # ends within a frame
        for segment in found:
            nearest = min(truth, key=lambda t: abs(t.query_start - segment.query_start)
                          + abs(t.target_start - segment.target_start))
            np.testing.assert_allclose(boxes([segment])[0], boxes([nearest])[0], atol=1.0)
        assert all(0.7 < segment.score < 0.9 for segment in found)


def test_unrelated_pairs_rarely_give_a_segment_and_then_a_low_score():
    found = [segment for seed in range(10) for segment in localize_matrix(
        synthetic_matrix(30, 25, [], background=0.2, noise=0.05, seed=seed)[0])]
    # Chance alignments of background frames: measured 1 in 10 pairs, scoring 0.32 (copies 0.8).
    assert len(found) <= 2 and all(segment.score < 0.4 for segment in found)


def test_speed_changes_beyond_max_speed_are_rejected():
    similarity, _ = synthetic_matrix(10, 40, [Segment(0, 8, 0, 32)], seed=0)  # 4x slower
    assert localize_matrix(similarity, LocalizationConfig(max_speed=3.0, max_step=4)) == []
    found = localize_matrix(similarity, LocalizationConfig(max_speed=5.0, max_step=4))
    assert len(found) == 1 and temporal_iou((found[0].target_start, found[0].target_end),
                                            (0, 32)) > 0.6


def test_times_follow_each_axis_frame_rate():
    similarity, _ = synthetic_matrix(20, 20, [Segment(4, 16, 2, 14)], seed=0)
    [segment] = localize_matrix(similarity, query_fps=2.0, target_fps=1.0)
    np.testing.assert_allclose(boxes([segment])[0], (2.0, 8.0, 2.0, 14.0), atol=0.5)


def test_bad_matrices_are_refused():
    with pytest.raises(ValueError, match="matrix"):
        localize_matrix(np.zeros((3,)))
    with pytest.raises(ValueError, match="NaN"):
        localize_matrix(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="max_speed"):
        LocalizationConfig(max_speed=0.5)
    # A flat matrix (two still videos) has no structure: no segment, no division by zero.
    assert localize_matrix(np.full((6, 6), 0.5)) == []


def test_localize_with_the_fine_student_and_the_teacher(networks_for_localize):
    """Indexed videos whose target copies query frames 3..10 after 4 unrelated frames."""
    rng = np.random.default_rng(0)
    for network, dims in networks_for_localize:
        query = rng.standard_normal((14, 9, dims)).astype(np.float32)
        target = np.concatenate([rng.standard_normal((4, 9, dims)).astype(np.float32),
                                 query[3:11] + 0.3 * rng.standard_normal((8, 9, dims)),
                                 rng.standard_normal((3, 9, dims)).astype(np.float32)])
        found = network.localize(network.index_video(query), network.index_video(target))
        assert boxes(found) == [(3.0, 11.0, 4.0, 12.0)], network.name
        assert localize(network, network.index_video(query),
                        network.index_video(target)) == found


@pytest.fixture(scope="module")
def networks_for_localize(checkpoints):
    from dns_tf.convert import load_official

    return [(load_official(checkpoints / "fg_att_student.pth"), 512),
            (load_official(checkpoints / "fg_bin_student.pth"), 512),
            (load_official(checkpoints / "visil_teacher.pth"), 3840)]


# --- Metrics, against hand-computed values --------------------------------------------------------

PAIR, OTHER = ("q", "t"), ("q", "u")


def test_temporal_iou():
    assert temporal_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert temporal_iou((0, 1), (2, 3)) == 0.0


def test_f1_needs_iou_on_both_axes_and_matches_one_to_one():
    truth = {PAIR: [Segment(0, 10, 0, 10)]}
    # Query IoU 1, target IoU 4/10: no match.
    assert segment_f1(truth, {PAIR: [Segment(0, 10, 0, 4)]})["f1"] == 0.0
    # Two predictions on one true segment: one true positive, one false positive.
    result = segment_f1(truth, {PAIR: [Segment(0, 10, 0, 10, 0.9), Segment(1, 10, 1, 10, 0.8)]})
    assert (result["true_positives"], result["precision"], result["recall"]) == (1, 0.5, 1.0)
    assert result["f1"] == pytest.approx(2 / 3)
    # A prediction on a pair without ground truth is a false positive; a missed pair counts.
    truth = {PAIR: [Segment(0, 10, 0, 10)], OTHER: [Segment(0, 5, 0, 5)]}
    result = segment_f1(truth, {PAIR: [Segment(0, 9, 0, 9)], ("x", "y"): [Segment(0, 1, 0, 1)]})
    assert (result["precision"], result["recall"]) == (0.5, 0.5)


def test_micro_ap_hand_computed():
    truth = {PAIR: [Segment(0, 10, 0, 10)]}
    assert segment_micro_ap(truth, {PAIR: [Segment(0, 10, 0, 10)]}) == pytest.approx(1.0)
    half, elsewhere = Segment(0, 5, 0, 5, 0.9), Segment(20, 30, 20, 30, 0.8)
    # Half the copy first (recall 0.5 at precision 1), then a miss (recall unchanged).
    assert segment_micro_ap(truth, {PAIR: [half, elsewhere]}) == pytest.approx(0.5)
    # The miss first: recall stays 0; then the half copy at precision 5 / 15.
    swapped = [Segment(0, 5, 0, 5, 0.8), Segment(20, 30, 20, 30, 0.9)]
    assert segment_micro_ap(truth, {PAIR: swapped}) == pytest.approx(0.5 / 3)
    # Axes combine by geometric means: query recall 1, target recall 0.5, precisions 1.
    assert segment_micro_ap({PAIR: [Segment(0, 10, 0, 20)]},
                            {PAIR: [Segment(0, 10, 0, 10)]}) == pytest.approx(np.sqrt(0.5))
    # Across pairs (micro): pair 1 all found first (recall 10/20 on each axis), then half of
    # pair 2's 10 s (recall 15/20) with precision 15/20 after a 10 s prediction of which 5 s hit.
    truth = {PAIR: [Segment(0, 10, 0, 10)], OTHER: [Segment(0, 10, 0, 10)]}
    predictions = {PAIR: [Segment(0, 10, 0, 10, 0.9)], OTHER: [Segment(5, 15, 5, 15, 0.5)]}
    assert segment_micro_ap(truth, predictions) == pytest.approx(0.5 * 1 + 0.25 * 0.75)
    # Equal scores form one group: the same as both at once.
    tied = {PAIR: [Segment(0, 10, 0, 10, 0.5)], OTHER: [Segment(5, 15, 5, 15, 0.5)]}
    assert segment_micro_ap(truth, tied) == pytest.approx(0.75 * 0.75)
    # Overlapping predictions count their time once.
    overlapping = {PAIR: [Segment(0, 6, 0, 6, 0.9), Segment(4, 10, 4, 10, 0.8)]}
    assert segment_micro_ap({PAIR: [Segment(0, 10, 0, 10)]}, overlapping) == pytest.approx(1.0)
    assert segment_micro_ap({}, predictions) == 0.0


def test_localization_metrics_for_results_json():
    truth = {PAIR: [Segment(0, 10, 0, 10)]}
    metrics = localization_metrics(truth, {PAIR: [Segment(0, 10, 0, 10, 0.7)]})
    assert metrics == {"segment_f1_iou50": 1.0, "segment_muap": 1.0, "pairs": 1,
                       "precision_iou50": 1.0, "recall_iou50": 1.0}


# --- Files, picture, command line ----------------------------------------------------------------

def write_json(path, content):
    path.write_text(json.dumps(content))
    return path


GROUND_TRUTH = [{"query": "q000", "target": "q000_ds1", "query_start": 2.0, "query_end": 6.5,
                 "target_start": 10.0, "target_end": 14.5},
                {"query": "q000", "target": "q000_nd1", "query_start": 0.0, "query_end": 12.0,
                 "target_start": 0.0, "target_end": 9.6}]


def test_segment_files_round_trip_and_bad_entries_are_named(tmp_path):
    truth = read_segments(write_json(tmp_path / "gt.json", GROUND_TRUTH))
    assert truth[("q000", "q000_ds1")] == [Segment(2.0, 6.5, 10.0, 14.5, 1.0)]
    write_segments(tmp_path / "out.json", truth)
    assert read_segments(tmp_path / "out.json", scored=True) == truth
    with pytest.raises(SegmentFormatError, match="entry 1: missing score"):
        read_segments(write_json(tmp_path / "p.json", [{**GROUND_TRUTH[0], "score": 1},
                                                       GROUND_TRUTH[1]]), scored=True)
    with pytest.raises(SegmentFormatError, match="query_start < query_end"):
        read_segments(write_json(tmp_path / "b.json", [{**GROUND_TRUTH[0], "query_end": 1.0}]))
    with pytest.raises(SegmentFormatError, match="'target_end' must be a finite number"):
        read_segments(write_json(tmp_path / "c.json", [{**GROUND_TRUTH[0], "target_end": "x"}]))
    with pytest.raises(SegmentFormatError, match="expected a JSON list"):
        read_segments(write_json(tmp_path / "d.json", {"segments": []}))


def test_evaluate_segments_command(tmp_path, capsys):
    truth = write_json(tmp_path / "gt.json", GROUND_TRUTH)
    predictions = write_json(tmp_path / "pred.json", [
        {**GROUND_TRUTH[0], "query_start": 2.5, "score": 0.9},   # IoU 4/4.5 and 1: a hit
        {**GROUND_TRUTH[1], "target_end": 4.0, "score": 0.8}])   # target IoU 0.42: a miss
    assert cli_main(["evaluate", "--segments", str(truth), str(predictions), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["pairs"] == 2 and metrics["segment_f1_iou50"] == 0.5
    assert 0 < metrics["segment_muap"] < 1
    assert cli_main(["evaluate", "--segments", str(truth), str(tmp_path / "none.json")]) == 1
    assert capsys.readouterr().err.startswith("dns-tf evaluate: error: ")
    assert cli_main(["evaluate", "--segments", str(truth), str(truth)]) == 1  # no scores
    assert "missing score" in capsys.readouterr().err


def test_plot_writes_a_png(tmp_path):
    similarity, truth = synthetic_matrix(20, 30, [Segment(2, 12, 5, 25)], seed=0)
    plot_localization(similarity, tmp_path / "pair.png", localize_matrix(similarity), truth,
                      title="q vs t")
    assert (tmp_path / "pair.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="matrix"):
        plot_localization(np.zeros(3), tmp_path / "bad.png")
