"""DnS retrieval end to end on a small index: coarse candidates, selector, fine re-ranking."""

import os

import numpy as np
import pytest

from dns_tf.convert import load_official
from dns_tf.data.padding import padded_batch_from_arrays
from dns_tf.evaluation.index_scores import database_scores
from dns_tf.index import CoarseConfig, VideoIndex
from dns_tf.fine_representation import unpack_bits
from dns_tf.retrieval import MERGES, DnSRetriever, LocalBackend, SearchConfig

NUM_VIDEOS = 40


def unit_regions(rng, frames):
    features = rng.standard_normal((frames, 9, 512), dtype=np.float32)
    return features / np.linalg.norm(features, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def backend(checkpoints):
    return LocalBackend(load_official(checkpoints / "cg_student.pth"),
                        load_official(checkpoints / "fg_bin_student.pth"),
                        load_official(checkpoints / "selector.pth"), batch_size=8)


@pytest.fixture(scope="module")
def collection():
    """A query and NUM_VIDEOS videos, some sharing frames with the query."""
    rng = np.random.default_rng(0)
    query = unit_regions(rng, 12)
    videos = {}
    for i in range(NUM_VIDEOS):
        video = unit_regions(rng, int(rng.integers(4, 24)))
        if i % 4 == 0:  # a noisy copy of part of the query
            take = min(len(video), len(query))
            video[:take] = query[:take] + 0.5 * video[:take]
            video /= np.linalg.norm(video, axis=-1, keepdims=True)
        videos[f"v{i:02d}"] = video
    return query, videos


def build_index(path, backend, videos, config=None):
    index = VideoIndex.create(str(path), coarse_dims=backend.coarse_student.output_dims,
                              fine_kind=backend.fine_kind, fine_shape_tail=backend.fine_shape_tail,
                              config=config)
    ids = list(videos)
    for start in range(0, len(ids), 16):
        batch = ids[start:start + 16]
        padded, mask = padded_batch_from_arrays([videos[i] for i in batch])
        indexed = backend.index(padded, mask)
        index.add_many(batch, indexed.coarse, indexed.fine, indexed.selector)
    return index


@pytest.fixture(scope="module")
def retriever(tmp_path_factory, backend, collection):
    index = build_index(tmp_path_factory.mktemp("retrieval") / "index", backend, collection[1])
    yield DnSRetriever(index, backend)
    index.close()


def search(retriever, query, **settings):
    return retriever.search(query, SearchConfig(top=NUM_VIDEOS, **settings))


def test_indexing_a_padded_batch_equals_indexing_each_video_alone(backend, collection):
    videos = list(collection[1].values())[:6]
    padded, mask = padded_batch_from_arrays(videos)
    batched = backend.index(padded, mask)
    for row, video in enumerate(videos):
        alone = backend.index(video[None], np.ones((1, len(video)), np.float32))
        np.testing.assert_allclose(batched.coarse[row], alone.coarse[0], atol=1e-5)
        np.testing.assert_array_equal(batched.fine[row], alone.fine[0])
        assert batched.selector[row] == pytest.approx(alone.selector[0], abs=1e-5)


def test_dns_at_100_percent_is_the_fine_ranking(retriever, collection):
    dns = search(retriever, collection[0], mode="dns", percentage=100)
    fine = search(retriever, collection[0], mode="fine")
    assert dns.ids == fine.ids
    np.testing.assert_array_equal(dns.scores, fine.scores)
    assert dns.num_reranked == NUM_VIDEOS and all(hit.reranked for hit in dns.hits)


def test_dns_at_0_percent_is_the_coarse_ranking(retriever, collection):
    dns = search(retriever, collection[0], mode="dns", percentage=0)
    coarse = search(retriever, collection[0], mode="coarse")
    paper = search(retriever, collection[0], mode="dns", percentage=0, merge="paper")
    assert dns.ids == coarse.ids == paper.ids and dns.num_reranked == 0
    raw = np.array([hit.coarse_score for hit in coarse.hits])
    # The paper's merge keeps raw coarse scores; the calibrated one maps them onto the fine scale.
    np.testing.assert_array_equal(paper.scores, raw)
    np.testing.assert_allclose(dns.scores, retriever.coarse_to_fine(raw), atol=1e-6)
    assert not any(hit.reranked for hit in dns.hits)


def test_fine_scores_are_the_students_similarity_of_each_pair(retriever, backend, collection):
    ranking = search(retriever, collection[0], mode="fine")
    query = retriever.index_query(collection[0]).fine[0]
    student = backend.fine_student
    for hit in ranking.hits[:5]:
        target = retriever.index.get(hit.video_id).fine
        expected = float(np.asarray(student.calculate_video_similarity(
            unpack_bits(query), unpack_bits(target)))[0, 0])
        assert hit.score == pytest.approx(expected / 2 + 0.5, abs=1e-5)


def selector_routing(retriever, backend, query_features):
    query = retriever.index_query(query_features)
    coarse_scores, ids = retriever.index.coarse_scores_all(query.coarse)
    mlp_input = np.stack([np.full(len(ids), query.selector[0]),
                          retriever.index.selector_scores(ids), coarse_scores[0]], 1)
    return ids, coarse_scores[0], backend.selector_scores(mlp_input)


def test_budget_reranks_the_selectors_top_choices(retriever, backend, collection):
    ranking = search(retriever, collection[0], mode="dns", budget=7, routing="selector",
                     merge="paper")
    assert ranking.num_reranked == 7
    reranked = {hit.video_id for hit in ranking.hits if hit.reranked}
    assert len(reranked) == 7
    # They are the 7 pairs the selector scores highest.
    ids, _, routing = selector_routing(retriever, backend, collection[0])
    assert reranked == {ids[i] for i in np.argsort(-routing, kind="stable")[:7]}
    # The others keep their coarse score.
    assert all(hit.score == hit.coarse_score for hit in ranking.hits if not hit.reranked)


def test_routings_choose_from_the_coarse_top(retriever, backend, collection):
    ids, coarse, routing = selector_routing(retriever, backend, collection[0])
    by_coarse = np.argsort(-coarse, kind="stable")
    for budget in (3, 7):
        chosen = {name: {hit.video_id for hit in search(
            retriever, collection[0], budget=budget, routing=name, merge="calibrated").hits
            if hit.reranked}
            for name in ("coarse", "selector_in_coarse")}
        assert chosen["coarse"] == {ids[i] for i in by_coarse[:budget]}
        # The selector's best among the coarse top max(2 x budget, 10).
        pool = by_coarse[:max(2 * budget, 10)]
        assert chosen["selector_in_coarse"] == {
            ids[i] for i in pool[np.argsort(-routing[pool], kind="stable")[:budget]]}


def test_calibrated_merge_puts_coarse_scores_on_the_fine_scale(retriever, collection):
    ranking = search(retriever, collection[0], percentage=25, routing="coarse",
                     merge="calibrated")
    assert ranking.num_reranked == 10
    for hit in ranking.hits:
        if not hit.reranked:
            assert hit.score == pytest.approx(float(retriever.coarse_to_fine(hit.coarse_score)),
                                              abs=1e-6)
    scores = ranking.scores
    assert np.all(scores[:-1] >= scores[1:])
    # The map was fitted here, in memory (the index stores none), on all 780 pairs of its 40
    # videos.
    assert not os.path.exists(os.path.join(retriever.index.path, "calibration.json"))
    assert retriever.calibration.fitted_on == {"videos": 40, "pairs": 780,
                                               "method": "isotonic", "seed": 0}


def test_sweep_matrices_give_the_searches_scores(retriever, collection):
    """dns_similarities on database_scores' matrices equals what search returns, for every merge
    and routing (the demo's sweep is the searches' answer)."""
    from dns_tf.evaluation.sweep import dns_similarities

    query, videos = collection
    database = sorted(videos)
    scores = database_scores(retriever, [query], database)
    for merge in MERGES:
        for routing in ("selector_in_coarse", "coarse", "selector"):
            if merge == "cascade" and routing != "coarse":
                with pytest.raises(ValueError, match="keeps the coarse order only"):
                    SearchConfig(merge=merge, routing=routing)
                continue
            config = SearchConfig(top=NUM_VIDEOS, percentage=20, merge=merge, routing=routing)
            ranking = retriever.search(query, config)
            matrix = dns_similarities(scores.coarse, scores.fine, scores.selector, config,
                                      retriever.coarse_to_fine, scores.available)
            got = {video: matrix[0, column] for column, video in enumerate(database)}
            for hit in ranking.hits:
                assert got[hit.video_id] == pytest.approx(hit.score, abs=1e-5), (merge, routing)


def test_cascade_ranks_the_reranked_candidates_first(retriever, collection):
    """The fine student orders what it saw; the rest follows in coarse order, on the fine scale."""
    query, _ = collection
    cascade = retriever.search(query, SearchConfig(top=NUM_VIDEOS, percentage=30,
                                                   merge="cascade"))
    calibrated = retriever.search(query, SearchConfig(top=NUM_VIDEOS, percentage=30,
                                                      merge="calibrated"))
    reranked = [hit.reranked for hit in cascade.hits]
    count = sum(reranked)
    assert 0 < count < NUM_VIDEOS and all(reranked[:count]) and not any(reranked[count:])
    for block in (cascade.hits[:count], cascade.hits[count:]):
        assert [hit.score for hit in block] == sorted((hit.score for hit in block), reverse=True)
    # Same scores as the calibrated merge, which ranks them in one list.
    assert ({hit.video_id: hit.score for hit in cascade.hits}
            == pytest.approx({hit.video_id: hit.score for hit in calibrated.hits}))
    rest = [hit.coarse_score for hit in cascade.hits[count:]]
    assert rest == sorted(rest, reverse=True) and min(
        hit.coarse_score for hit in cascade.hits[:count]) >= max(rest)


def test_match_threshold_filters_and_marks_hits(tmp_path, backend, collection):
    from dns_tf.calibration import IndexCalibration, MatchThreshold, fit_index_calibration

    query, videos = collection
    with build_index(tmp_path / "index", backend, dict(list(videos.items())[:12])) as index:
        retriever = DnSRetriever(index, backend)
        with pytest.raises(ValueError, match="no match threshold"):
            retriever.search(query, SearchConfig(matches_only=True))
        everything = retriever.search(query, SearchConfig(mode="fine"))
        assert all(hit.is_match is None for hit in everything.hits)
        threshold = float(np.median(everything.scores))
        calibration = fit_index_calibration(index, backend)
        IndexCalibration(calibration.coarse_to_fine, calibration.fitted_on,
                         MatchThreshold(threshold, 0.9, 0.9, 0.5, 10, 5)).save(index.path)
        retriever = DnSRetriever(index, backend)
        marked = retriever.search(query, SearchConfig(mode="fine"))
        assert [hit.is_match for hit in marked.hits] == [s >= threshold for s in marked.scores]
        matches = retriever.search(query, SearchConfig(mode="fine", matches_only=True))
        assert matches.ids == [hit.video_id for hit in marked.hits if hit.is_match]
        above = retriever.search(query, SearchConfig(mode="fine", min_score=0.6))
        assert above.ids == [hit.video_id for hit in marked.hits if hit.score >= 0.6]
        # Under the paper's merge a hit not re-ranked has a raw coarse score: not judged.
        paper = retriever.search(query, SearchConfig(percentage=25, merge="paper"))
        assert all((hit.is_match is None) == (not hit.reranked) for hit in paper.hits)


def test_percentage_is_a_share_of_the_candidates(retriever, collection):
    ranking = search(retriever, collection[0], mode="dns", percentage=25)
    assert ranking.num_reranked == NUM_VIDEOS // 4
    assert sum(hit.reranked for hit in ranking.hits) == NUM_VIDEOS // 4


def test_top_limits_the_hits(retriever, collection):
    ranking = retriever.search(collection[0], SearchConfig(top=5, percentage=50))
    assert len(ranking.hits) == 5 and ranking.num_candidates == NUM_VIDEOS
    scores = ranking.scores
    assert np.all(scores[:-1] >= scores[1:])
    full = search(retriever, collection[0], percentage=50)
    assert ranking.ids == full.ids[:5]


def test_candidates_are_the_coarse_top_k(retriever, collection):
    ranking = retriever.search(collection[0], SearchConfig(mode="coarse", candidates=10, top=10))
    everything = search(retriever, collection[0], mode="coarse")
    assert ranking.num_candidates == 10
    assert ranking.ids == everything.ids[:10]


def test_candidates_through_scann(tmp_path, backend, collection):
    # Every leaf searched: the partitioning of 40 videos into 5 leaves may split a query's
    # neighbours, and this test is about the candidates' path, not about ScaNN's recall.
    config = CoarseConfig(brute_force_below=8, min_leaves_to_search=NUM_VIDEOS)
    with build_index(tmp_path / "scann", backend, collection[1], config) as index:
        index.rebuild()
        assert index.stats()["searcher_kind"] == "scann"
        retriever = DnSRetriever(index, backend)
        ranking = retriever.search(collection[0], SearchConfig(candidates=12, percentage=50,
                                                               top=12))
        exact = retriever.search(collection[0], SearchConfig(mode="coarse", top=NUM_VIDEOS))
    assert ranking.num_candidates == 12 and ranking.num_reranked == 6
    # ScaNN re-scores its candidates exactly: searching every leaf it finds the exact top 12.
    assert set(ranking.ids) == set(exact.ids[:12])


def test_database_scores_agree_with_search(retriever, collection):
    query, videos = collection
    database = sorted(videos) + ["not_indexed"]
    scores = database_scores(retriever, [query], database)
    assert scores.available.tolist() == [True] * NUM_VIDEOS + [False]
    fine = search(retriever, query, mode="fine")
    coarse = search(retriever, query, mode="coarse")
    for ranking, matrix, attribute in ((fine, scores.fine, "score"),
                                       (coarse, scores.coarse, "coarse_score")):
        for hit in ranking.hits:
            assert matrix[0, database.index(hit.video_id)] == pytest.approx(
                getattr(hit, attribute), abs=1e-6)
    assert set(scores.seconds_per_query) == {"index_query", "coarse", "selector", "fine"}


def test_backend_must_match_the_index(tmp_path, checkpoints, backend):
    attention = LocalBackend(backend.coarse_student,
                             load_official(checkpoints / "fg_att_student.pth"), backend.selector)
    with VideoIndex.create(str(tmp_path / "bits"), coarse_dims=128, fine_kind="bits",
                           fine_shape_tail=(9, 512)) as index:
        with pytest.raises(ValueError, match="float16"):
            DnSRetriever(index, attention)


def test_videos_shorter_than_the_comparator_needs_index_and_search_in_every_mode(
        tmp_path, backend, collection):
    rng = np.random.default_rng(11)
    short = {f"s{frames}": unit_regions(rng, frames) for frames in (1, 2, 3)}
    videos = {**short, **dict(list(collection[1].items())[:5])}
    with build_index(tmp_path / "index", backend, videos) as index:  # short and long, one batch
        retriever = DnSRetriever(index, backend)
        for video_id, video in short.items():
            alone = backend.index(video[None], np.ones((1, len(video)), np.float32))
            assert np.isfinite(alone.selector).all()
            assert index.get(video_id).selector_score == pytest.approx(alone.selector[0],
                                                                       abs=1e-5)
        query = short["s1"]  # a one-frame query
        for mode in ("coarse", "fine", "dns"):
            ranking = retriever.search(query, SearchConfig(mode=mode, percentage=50, top=8))
            assert len(ranking.hits) == 8 and np.isfinite(ranking.scores).all(), mode
        ranking = retriever.search(query, SearchConfig(mode="fine", top=8))
        student = backend.fine_student
        fine_query = unpack_bits(retriever.index_query(query).fine[0])
        for hit in ranking.hits:
            target = unpack_bits(index.get(hit.video_id).fine)
            expected = float(np.asarray(student.calculate_video_similarity(fine_query, target))[0, 0])
            assert hit.score == pytest.approx(expected / 2 + 0.5, abs=1e-5), hit.video_id


def test_calibration_samples_neighbours_and_random_pairs_of_a_large_index(retriever):
    from dns_tf.calibration import CalibrationConfig, sample_database_pairs

    index = retriever.index
    config = CalibrationConfig(max_pairs=200, neighbours=4, seed=1)
    pairs = sample_database_pairs(index, config)
    # 25 sampled videos (200 // (2 x 4)), each with 4 nearest neighbours and 4 random others.
    assert len(pairs) <= 200 and len(set(pairs)) == len(pairs)
    assert all(a < b and a in index and b in index for a, b in pairs)
    anchors = {video for pair in pairs for video in pair}
    coarse = {video: index.get(video).coarse for video in index.ids()}
    with_nearest = 0
    for anchor in anchors:
        others = sorted((v for v in coarse if v != anchor),
                        key=lambda v: -float(coarse[anchor] @ coarse[v]))
        with_nearest += tuple(sorted((anchor, others[0]))) in pairs
    assert with_nearest >= 25
    assert sample_database_pairs(index, config) == pairs  # seeded
