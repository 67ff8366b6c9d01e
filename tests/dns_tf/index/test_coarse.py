"""Coarse searchers: brute force is exact, ScaNN meets its recall, the delta merge hides removals."""

import json

import numpy as np
import pytest

from dns_tf.bench.coarse import clustered_unit_vectors, exact_top_k, run_coarse_benchmark
from dns_tf.index.coarse import (BruteForceSearcher, CoarseConfig, MergedSearcher, RowsView,
                                 ScannSearcher, build_searcher, top_k)


def _clustered(n, dims=32, centres=100, seed=0, queries=50):
    rng = np.random.default_rng(seed)
    centre_vectors = rng.standard_normal((centres, dims), dtype=np.float32)
    centre_vectors /= np.linalg.norm(centre_vectors, axis=1, keepdims=True)
    database = clustered_unit_vectors(n, dims, centre_vectors, 1.0, rng)
    return database, clustered_unit_vectors(queries, dims, centre_vectors, 1.0, rng)


def _recall(found_keys, true_keys):
    return np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(found_keys, true_keys)])


@pytest.fixture(scope="module")
def scann_collection():
    database, queries = _clustered(30_000)
    keys = np.arange(30_000, dtype=np.int64) * 3 + 7  # keys are not row numbers
    return database, queries, keys, ScannSearcher.build(database, keys, CoarseConfig())


def test_top_k_orders_best_first():
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [3.0, 1.0, 2.0, 0.0]], np.float32)
    columns, values = top_k(scores, 3)
    np.testing.assert_array_equal(columns, [[1, 3, 2], [0, 2, 1]])
    np.testing.assert_array_equal(values, np.float32([[0.9, 0.7, 0.5], [3.0, 2.0, 1.0]]))
    assert top_k(scores, 10)[0].shape == (2, 4)


def test_brute_force_is_exact():
    database, queries = _clustered(2_000)
    keys = np.arange(2_000, dtype=np.int64) + 100
    searcher = BruteForceSearcher(database, keys)
    scores, found = searcher.search(queries, 10)
    exact = queries @ database.T
    expected_columns = np.argsort(-exact, axis=1)[:, :10]
    np.testing.assert_array_equal(found, keys[expected_columns])
    np.testing.assert_allclose(scores, np.take_along_axis(exact, expected_columns, 1),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(searcher.scores_all(queries), exact, rtol=1e-5, atol=1e-6)
    # One [D] query, and k larger than the collection.
    single_scores, single_keys = searcher.search(queries[0], 5)
    np.testing.assert_array_equal(single_keys, found[:1, :5])
    assert BruteForceSearcher(database[:3], keys[:3]).search(queries, 10)[1].shape == (50, 3)


def test_wrong_query_dims_is_a_clear_error():
    searcher = BruteForceSearcher(np.eye(4, dtype=np.float32), np.arange(4))
    with pytest.raises(ValueError, match=r"queries must have shape \[Q, 4\]"):
        searcher.search(np.zeros((2, 5)), 1)


def test_build_searcher_picks_brute_force_for_small_collections():
    database, _ = _clustered(500)
    assert isinstance(build_searcher(database, np.arange(500), CoarseConfig()), BruteForceSearcher)


@pytest.mark.slow
def test_scann_recall_and_exact_scores(scann_collection):
    database, queries, keys, searcher = scann_collection
    scores, found = searcher.search(queries, 10)
    truth = keys[exact_top_k(database, queries, 10)]
    assert _recall(found, truth) >= 0.9
    # Re-ordering is exact float32: returned scores are the true inner products of returned keys.
    rows = (found - 7) // 3
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, database[rows]),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(searcher.scores_all(queries[:3]), queries[:3] @ database.T,
                               rtol=1e-4, atol=1e-5)
    # The one-query path returns what the batched path does.
    np.testing.assert_array_equal(searcher.search(queries[4], 10)[1], found[4:5])


@pytest.mark.slow
def test_scann_gives_min_k_n_results_even_past_the_searched_leaves(scann_collection):
    database, queries, keys, searcher = scann_collection
    # 16 leaves of ~170 vectors hold fewer than 5000: the query falls back to exact scoring.
    scores, found = searcher.search(queries[:2], 5000)
    assert found.shape == (2, 5000) and np.all(found >= 0) and np.all(np.isfinite(scores))
    exact_best = np.sort(queries[:2] @ database.T, axis=1)[:, ::-1][:, :5000]
    np.testing.assert_allclose(scores, exact_best, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_scann_save_load_round_trip(scann_collection, tmp_path):
    database, queries, keys, searcher = scann_collection
    searcher.save(str(tmp_path))
    loaded = ScannSearcher.load(str(tmp_path), RowsView(database, np.arange(len(database))),
                                CoarseConfig())
    np.testing.assert_array_equal(loaded.keys, keys)
    for (a_scores, a_keys), (b_scores, b_keys) in [(searcher.search(queries, 10),
                                                    loaded.search(queries, 10))]:
        np.testing.assert_array_equal(a_keys, b_keys)
        np.testing.assert_allclose(a_scores, b_scores, rtol=1e-6)
    np.testing.assert_allclose(loaded.scores_all(queries[:2]), queries[:2] @ database.T,
                               rtol=1e-4, atol=1e-5)


def test_merged_searcher_is_exact_search_over_the_live_vectors():
    database, queries = _clustered(3_000)
    base_keys = np.arange(2_000, dtype=np.int64)
    delta_keys = np.arange(2_000, 3_000, dtype=np.int64)
    removed = np.arange(0, 3_000, 7, dtype=np.int64)
    removed_from_base = removed[removed < 2_000]
    delta_alive = ~np.isin(delta_keys, removed)
    merged = MergedSearcher(BruteForceSearcher(database[:2_000], base_keys),
                            BruteForceSearcher(database[2_000:][delta_alive],
                                               delta_keys[delta_alive]),
                            removed_from_base)
    live = np.setdiff1d(np.arange(3_000), removed)
    assert sorted(merged.keys.tolist()) == live.tolist()
    exact = BruteForceSearcher(database[live], live)
    for k in (1, 10, 100):
        merged_scores, merged_keys = merged.search(queries, k)
        exact_scores, exact_keys = exact.search(queries, k)
        np.testing.assert_array_equal(merged_keys, exact_keys)
        np.testing.assert_allclose(merged_scores, exact_scores, rtol=1e-5, atol=1e-6)
    assert not np.isin(merged.search(queries, len(live))[1], removed).any()
    all_scores = merged.scores_all(queries)
    order = np.argsort(merged.keys)
    np.testing.assert_allclose(all_scores[:, order], queries @ database[live].T,
                               rtol=1e-5, atol=1e-6)


def test_rebuild_policy():
    config = CoarseConfig(rebuild_min_delta=100, rebuild_delta_fraction=0.1)
    assert not config.needs_rebuild(built_size=500, pending=100)
    assert config.needs_rebuild(built_size=500, pending=101)
    assert not config.needs_rebuild(built_size=10_000, pending=1_000)
    assert config.needs_rebuild(built_size=10_000, pending=1_001)
    assert config.num_leaves(1_000_000) == 1000
    assert config.leaves_to_search(1000) == 20 and config.leaves_to_search(20) == 16


@pytest.mark.slow
def test_coarse_benchmark_reports_recall_and_speed(capsys):
    result = run_coarse_benchmark(n=25_000, dims=64, centres=50, queries=100, exact_queries=10,
                                  k=100)
    assert result["recall_at_100"] >= 0.9
    assert result["scann_qps"] > 0 and result["exact_qps"] > 0 and result["build_s"] > 0
    json.dumps(result)  # the CLI prints it as JSON
