"""A collection split across index shards answers like one index."""

import numpy as np
import pytest

from dns_tf.retrieval import DnSRetriever, SearchConfig, ShardedRetriever
from test_retrieval import backend, build_index, collection  # noqa: F401  (shared fixtures)


@pytest.fixture(scope="module")
def single_and_sharded(tmp_path_factory, backend, collection):  # noqa: F811
    root = tmp_path_factory.mktemp("sharded")
    videos = collection[1]
    ids = sorted(videos)
    whole = build_index(root / "whole", backend, videos)
    shards = [build_index(root / f"shard{s}", backend, {v: videos[v] for v in ids[s::2]})
              for s in range(2)]
    yield DnSRetriever(whole, backend), ShardedRetriever([DnSRetriever(s, backend) for s in shards])
    for index in (whole, *shards):
        index.close()


@pytest.mark.parametrize("mode", ["coarse", "fine"])
def test_sharded_ranking_equals_one_index(single_and_sharded, collection, mode):  # noqa: F811
    single, sharded = single_and_sharded
    config = SearchConfig(mode=mode, top=15, merge="paper")
    expected = single.search(collection[0], config)
    got = sharded.search(collection[0], config)
    assert got.ids == expected.ids
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-6)
    assert got.num_candidates == expected.num_candidates == len(collection[1])
    # Calibrated, every shard maps coarse scores with the first shard's map: one monotone map,
    # so the ranking stays the one index's.
    calibrated = sharded.search(collection[0], SearchConfig(mode=mode, top=15))
    assert calibrated.ids == expected.ids
    shared = sharded.retrievers[0].calibration
    assert all(shard.calibration is shared for shard in sharded.retrievers)


def test_each_shard_reranks_its_share(single_and_sharded, collection):  # noqa: F811
    _, sharded = single_and_sharded
    ranking = sharded.search(collection[0], SearchConfig(mode="dns", percentage=25, top=40))
    assert ranking.num_reranked == 2 * 5  # 25 % of each 20-video shard
    assert sum(hit.reranked for hit in ranking.hits) == ranking.num_reranked
    assert list(ranking.scores) == sorted(ranking.scores, reverse=True)
    with pytest.raises(ValueError, match="at least one shard"):
        ShardedRetriever([])
