"""PairScorer compares every pair as search does: each video alone, whatever the batch."""

import numpy as np
import pytest

from dns_tf.layers.comparator import VideoComparator
from dns_tf.models import FineGrainedStudent, ViSiLTeacher
from training.config import COMPARATOR_STRIDE, DistillationConfig
from training.scoring import PairScorer, length_batches

R, D = 9, 32
LENGTHS = [5, 7, 8, 9, 9, 12, 13, 3, 6, 7]


def features(seed=0):
    rng = np.random.default_rng(seed)
    return {f"v{i}": rng.normal(size=(n, R, D)).astype(np.float32)
            for i, n in enumerate(LENGTHS)}


def test_same_length_batches_hold_one_length_and_every_video_once():
    videos = features()
    seen = []
    for ids, padded, mask in length_batches(videos, list(videos), batch_size=2, same_length=True):
        assert len({len(videos[v]) for v in ids}) == 1
        assert mask.all()  # no padding at all
        seen += ids
    assert sorted(seen) == sorted(videos)


@pytest.mark.parametrize("network", [
    lambda: FineGrainedStudent(dims=D, attention=True),
    lambda: ViSiLTeacher(dims=D),  # replicate padding: padding would change its borders too
])
def test_scores_equal_each_pair_compared_alone(network):
    model = network()
    videos = features()
    targets = list(videos)
    batched = PairScorer(model, videos, batch_size=32).score("v1", targets)
    alone = [float(PairScorer(model, videos, batch_size=1).score("v1", [t])[0]) for t in targets]
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    # What padded batches would give instead (the comparator keeps a partial pooling window):
    # different for odd lengths, so the test above can tell the two apart.
    query = model.index_video(videos["v1"][None])
    padded = np.zeros((2, 13, R, D), np.float32)
    padded[0, :7], padded[1] = videos["v9"], videos["v6"]
    mask = np.zeros((2, 13), np.float32)
    mask[0, :7], mask[1] = 1, 1
    in_batch = np.asarray(model.calculate_video_similarity(
        query, model.index_video(padded, mask), None, mask))[0]
    assert abs(in_batch[0] - alone[9]) > 1e-4


def test_fine_students_train_on_whole_pooling_windows():
    assert COMPARATOR_STRIDE == VideoComparator.MIN_FRAMES
    assert DistillationConfig().frame_multiple == COMPARATOR_STRIDE
    assert DistillationConfig(align_frames=False).frame_multiple == 1
    assert DistillationConfig(student_type="coarse-grained").frame_multiple == 1
