"""Temporal augmentations: each one's effect on frame order and count, and the draw's behaviour."""

import collections

import numpy as np
import pytest

from dns_tf.data import augment


def frames(n):
    return np.arange(n)


def test_drop_windows_removes_whole_padded_windows():
    rng = np.random.default_rng(3)
    out = augment.drop_windows(frames(22), rng, window_size=5)
    # 22 frames pad to 25 with frames 0, 1, 2: windows start at 0, 5, 10, 15, 20.
    padded = np.concatenate([frames(22), [0, 1, 2]])
    windows = padded.reshape(5, 5)
    kept = out.reshape(-1, 5)
    assert 1 <= len(kept) < 5
    positions = [int(np.flatnonzero((windows == w).all(axis=1))[0]) for w in kept]
    assert positions == sorted(positions)  # surviving windows keep their order


def test_drop_windows_keeps_everything_when_all_would_go():
    out = augment.drop_windows(frames(10), np.random.default_rng(0), window_size=4, drop_rate=1.0)
    np.testing.assert_array_equal(out, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])


def test_shuffle_windows_permutes_windows_not_frames_within():
    out = augment.shuffle_windows(frames(40), np.random.default_rng(1), window_size=8)
    windows = out.reshape(5, 8)
    assert sorted(windows[:, 0].tolist()) == [0, 8, 16, 24, 32]
    np.testing.assert_array_equal(np.diff(windows, axis=1), 1)
    assert not np.array_equal(out, frames(40))


def test_window_padding_wraps_short_videos():
    out = augment.shuffle_windows(frames(9), np.random.default_rng(0), window_size=15)
    np.testing.assert_array_equal(np.sort(out), np.sort(np.concatenate([frames(9), frames(6)])))


def test_speed_and_direction_changes():
    np.testing.assert_array_equal(augment.keep_every_second_frame(frames(7)), [0, 2, 4, 6])
    np.testing.assert_array_equal(augment.duplicate_frames(frames(3)), [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(augment.duplicate_frames(frames(150)), frames(150))
    np.testing.assert_array_equal(augment.reverse(frames(4)), [3, 2, 1, 0])


def test_works_on_region_features_along_time():
    video = np.random.default_rng(0).standard_normal((20, 9, 4)).astype(np.float32)
    out = augment.shuffle_windows(video, np.random.default_rng(2), window_size=5)
    assert out.shape == (20, 9, 4) and out.dtype == np.float32
    order = augment.shuffle_windows(frames(20), np.random.default_rng(2), window_size=5)
    np.testing.assert_array_equal(out, video[order])


def classify(out, n):
    """Names the augmentation that turned arange(n) into ``out``."""
    if np.array_equal(out, frames(n)):
        return "none"
    if np.array_equal(out, frames(n)[::-1]):
        return "reverse"
    if np.array_equal(out, frames(n)[::2]):
        return "every_second"
    if np.array_equal(out, np.repeat(frames(n), 2)):
        return "duplicate"
    for w in range(augment.MIN_WINDOW, augment.MAX_WINDOW + 1):
        windows = augment._windows(frames(n), w)
        if len(out) % w or not all(any(np.array_equal(block, window) for window in windows)
                                   for block in out.reshape(-1, w)):
            continue
        if sorted(out.tolist()) == sorted(windows.ravel().tolist()):
            return "shuffle"
        if len(out) < n:
            return "drop"
    return "unknown"


def test_temporal_augment_draws_the_reference_mixture():
    rng = np.random.default_rng(0)
    counts = collections.Counter(classify(augment.temporal_augment(frames(60), rng), 60)
                                 for _ in range(2000))
    assert counts["unknown"] == 0
    # Reference probabilities: 0.5 none, 0.1 for each of the five augmentations. A drop that keeps
    # every window (or a shuffle that keeps the order) reads as another outcome: loose bounds.
    assert 0.45 < counts["none"] / 2000 < 0.56
    for name in ("drop", "shuffle", "every_second", "duplicate", "reverse"):
        assert 0.07 < counts[name] / 2000 < 0.13, (name, counts)


def test_temporal_augment_is_deterministic_per_seed():
    a = [augment.temporal_augment(frames(50), np.random.default_rng(7)) for _ in range(3)]
    assert all(np.array_equal(a[0], x) for x in a)
    outs = {tuple(augment.temporal_augment(frames(50), np.random.default_rng(seed)))
            for seed in range(40)}
    assert len(outs) > 5


def test_short_videos_are_left_alone_and_long_ones_truncated():
    rng = np.random.default_rng(0)
    for _ in range(50):
        np.testing.assert_array_equal(augment.temporal_augment(frames(8), rng), frames(8))
    for _ in range(50):
        out = augment.temporal_augment(frames(400), rng)
        assert len(out) <= 300
    np.testing.assert_array_equal(augment.truncate(frames(400), 300), frames(300))
    assert len(augment.temporal_augment(frames(100), rng, max_frames=None)) >= 50
    with pytest.raises(ValueError, match="max_frames"):
        augment.truncate(frames(4), 0)
