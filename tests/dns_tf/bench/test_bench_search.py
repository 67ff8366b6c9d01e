"""`dns-tf bench search`: the synthetic corpus, its cached index, and the measurement's shape."""

import numpy as np
import pytest

from dns_tf.bench.search import Corpus, Generator, cached_index, run_search_benchmark
from dns_tf.cli import main
from dns_tf.fine_representation import unpack_bits
from dns_tf.index import VideoIndex

SMALL = Corpus(videos=200, stories=2, related=10, seed=3)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for the module: the second test reuses the index the first one built."""
    return str(tmp_path_factory.mktemp("bench_search_cache"))


def test_corpus_refuses_too_few_videos():
    with pytest.raises(ValueError, match="too small for 20 stories"):
        Corpus(videos=1000)


def test_cli_reports_a_too_small_corpus_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "search", "--videos", "100", "--cache", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "dns-tf bench search: error: --videos 100 is too small for 20 stories of 100 related "
        "videos (at least 4000 needed)"]


def test_videos_are_deterministic_in_stored_form_with_a_spread_of_lengths():
    generator = Generator(Corpus(videos=2000, stories=2, related=10))
    first = [generator.fine(v) for v in range(300)]
    again = Generator(Corpus(videos=2000, stories=2, related=10)).fine(17)
    np.testing.assert_array_equal(first[17], again)
    assert all(f.dtype == np.uint8 and f.shape[1:] == (9, 64) for f in first)
    lengths = np.array([len(f) for f in first])
    assert lengths.min() >= 5 and lengths.max() <= 300
    assert 45 <= np.median(lengths) <= 80 and lengths.max() > 2 * np.median(lengths)
    attention = Generator(Corpus(videos=2000, fine="attention", stories=2, related=10)).fine(5)
    assert attention.dtype == np.float16 and attention.shape[1:] == (9, 512)
    np.testing.assert_allclose(np.linalg.norm(attention.astype(np.float32), axis=-1), 1, atol=2e-3)


def test_planted_videos_copy_their_story_and_are_closer_in_coarse_space():
    corpus = Corpus(videos=2000, stories=2, related=10)
    generator = Generator(corpus)
    planted = [v for v in range(corpus.videos) if generator.story_of(v) == 0]
    others = [v for v in range(corpus.videos) if generator.story_of(v) == -1][:50]
    assert len(planted) == corpus.related
    query = generator.query(0)
    query_coarse = generator.coarse([query])[0]
    planted_sim = generator.coarse([generator.fine(v) for v in planted]) @ query_coarse
    other_sim = generator.coarse([generator.fine(v) for v in others]) @ query_coarse
    assert planted_sim.min() > other_sim.max()
    # Frame level: some planted frame agrees with a query frame on ~3/4 of its bits (two 1/8
    # flips), unrelated frames on ~1/2.
    def best_agreement(video):
        a = unpack_bits(query).reshape(len(query), -1)
        b = unpack_bits(generator.fine(video)).reshape(-1, a.shape[1])
        return float((a @ b.T).max() / a.shape[1] / 2 + 0.5)
    assert all(best_agreement(v) > 0.7 for v in planted[:3])
    assert best_agreement(others[0]) < 0.6


@pytest.mark.slow
def test_index_is_built_once_then_reused_and_finds_the_planted_videos(cache):
    path, build, built_now = cached_index(SMALL, cache)
    assert built_now and build["videos"] == SMALL.videos and build["build_videos_per_s"] > 0
    again_path, again, built_again = cached_index(SMALL, cache)
    assert (again_path, again, built_again) == (path, build, False)
    generator = Generator(SMALL)
    with VideoIndex.open(path, readonly=True) as index:
        assert index.verify()["videos"] == SMALL.videos
        assert index.stats()["searcher_kind"] == "scann"
        np.testing.assert_array_equal(index.get("v0000042").fine, generator.fine(42))
        found = index.search(generator.coarse([generator.query(1)]), k=SMALL.related).ids[0]
    planted = {f"v{v:07d}" for v in range(SMALL.videos) if generator.story_of(v) == 1}
    assert len(planted & set(found)) >= SMALL.related - 1


@pytest.mark.slow
def test_search_benchmark_reports_every_stage(cache):
    result = run_search_benchmark(SMALL, cache, queries=2, coarse_queries=3,
                                  fine_queries=1, fine_sample=20, overlap_queries=1)
    assert list(result) == ["videos", "build_videos_per_s", "bytes_per_video", "peak_rss_mb",
                            "latency_ms", "top100_overlap_dns_5", "settings"]
    assert list(result["latency_ms"]) == ["coarse", "dns_1", "dns_5", "dns_10", "fine"]
    assert all(stage["p50"] > 0 and stage["p99"] >= stage["p50"]
               for stage in result["latency_ms"].values())
    assert result["latency_ms"]["fine"]["extrapolated_from_videos"] == 20
    assert "extrapolated" in result["settings"]["fine_latency"]
    assert 0.0 <= result["top100_overlap_dns_5"] <= 1.0
    assert result["videos"] == SMALL.videos and result["bytes_per_video"] > 9 * 64 * 5
    assert result["peak_rss_mb"] >= result["settings"]["search_peak_rss_mb"] > 0
