"""The DnS sweep on a constructed benchmark where each operating point's answer is known."""

import numpy as np
import pytest

from dns_tf.evaluation import FIVR, Cost, dns_sweep, format_table, plot_sweep

NUM_QUERIES, NUM_DATABASE, NUM_RELEVANT = 4, 40, 4
COSTS = dict(coarse_cost=Cost(0.01, 4.0), fine_cost=Cost(2.0, 1000.0),
             selector_cost=Cost(0.002, 0.5))


@pytest.fixture(scope="module")
def benchmark():
    """4 queries over 40 videos, 4 near-duplicates (ND) each.

    Coarse similarities are noise in (0, 1), so the coarse ranking is poor; fine similarities are
    1 for the near-duplicates and 0 otherwise, a perfect ranking; an oracle selector routes the
    near-duplicates first.
    """
    rng = np.random.default_rng(7)
    database = [f"v{index:02d}" for index in range(NUM_DATABASE)]
    queries = [f"q{index}" for index in range(NUM_QUERIES)]
    relevant = np.zeros((NUM_QUERIES, NUM_DATABASE), bool)
    annotation = {}
    for row, query in enumerate(queries):
        columns = rng.choice(NUM_DATABASE, NUM_RELEVANT, replace=False)
        relevant[row, columns] = True
        annotation[query] = {"ND": [database[column] for column in columns]}
    dataset = FIVR({"5k": {"queries": queries, "database": set(database)},
                    "annotation": annotation}, version="5k")
    coarse = rng.uniform(0.01, 0.99, relevant.shape)
    # The coarse student puts the near-duplicates low, so re-ranking has something to fix.
    coarse[relevant] *= 0.5
    fine = relevant.astype(np.float64)
    oracle = relevant + rng.uniform(0, 0.1, relevant.shape)
    return dataset, coarse, fine, oracle, relevant


def _dns(rows):
    return {row.percentage: row for row in rows if row.method == "DnS"}


def test_endpoints_equal_the_students_and_costs_follow_the_paper(benchmark):
    dataset, coarse, fine, oracle, _ = benchmark
    rows = dns_sweep(dataset, coarse, fine, oracle, **COSTS)
    assert [row.method for row in rows[:2]] == ["coarse-only", "fine-only"]
    coarse_only, fine_only, dns = rows[0], rows[1], _dns(rows)
    assert sorted(dns) == list(range(0, 101, 5))
    assert coarse_only.metrics == dataset.evaluate(coarse)
    assert fine_only.metrics == dataset.evaluate(fine) == {"DSVR": 1.0, "CSVR": 1.0, "ISVR": 1.0}
    assert coarse_only.metrics["DSVR"] < 0.5
    assert dns[0].metrics == coarse_only.metrics
    assert dns[100].metrics == fine_only.metrics
    # The oracle routes the 4 near-duplicates (10% of 40) first: from 10% on, the ranking is perfect.
    assert dns[5].metrics["DSVR"] > coarse_only.metrics["DSVR"]
    assert all(dns[p].metrics["DSVR"] == 1.0 for p in range(10, 101, 5))

    assert (coarse_only.seconds_per_query, coarse_only.kb_per_video) == (0.01, 4.0)
    assert (fine_only.seconds_per_query, fine_only.kb_per_video) == (2.0, 1000.0)
    assert dns[50].seconds_per_query == pytest.approx(0.5 * 2.0 + 0.01 + 0.002)
    assert dns[0].seconds_per_query == pytest.approx(0.012)
    assert {row.kb_per_video for row in dns.values()} == {1004.5}


def test_random_selector_improves_on_average_and_ends_at_fine(benchmark):
    dataset, coarse, fine, _, _ = benchmark
    rng = np.random.default_rng(0)
    curves = []
    for _ in range(8):
        rows = dns_sweep(dataset, coarse, fine, rng.uniform(size=coarse.shape), **COSTS)
        dns = _dns(rows)
        assert dns[100].metrics == {"DSVR": 1.0, "CSVR": 1.0, "ISVR": 1.0}
        curves.append([dns[p].metrics["DSVR"] for p in range(0, 101, 5)])
    mean_curve = np.mean(curves, axis=0)
    # Re-ranking a random share only ever lifts near-duplicates to the top: monotone on average.
    assert np.all(np.diff(mean_curve[::4]) > 0)
    assert mean_curve[10] < 1.0


def test_lazy_fine_similarities_and_available_subset(benchmark):
    dataset, coarse, fine, oracle, relevant = benchmark
    available = np.ones(NUM_DATABASE, bool)
    available[::4] = False  # 30 indexed videos
    calls = []

    def fine_fn(row, columns):
        calls.append((row, columns.copy()))
        return fine[row, columns]

    rows = dns_sweep(dataset, coarse, fine_fn, oracle, available=available,
                     percentages=(0, 10, 20), include_fine_only=False, **COSTS)
    assert [row.method for row in rows] == ["coarse-only", "DnS", "DnS", "DnS"]
    # Called once per query for the int(20% of 30) = 6 pairs of the best selector scores among
    # the available videos (those of 10% are among them).
    assert [row for row, _ in calls] == list(range(NUM_QUERIES))
    for row, columns in calls:
        best = np.flatnonzero(available)[np.argsort(-oracle[row, available])[:6]]
        assert sorted(columns) == sorted(best)
    eager = dns_sweep(dataset, coarse, fine, oracle, available=available,
                      percentages=(0, 10, 20), include_fine_only=False, **COSTS)
    assert [row.metrics for row in rows] == [row.metrics for row in eager]
    all_db = set(np.asarray(dataset.database)[available])
    assert rows[0].metrics == dataset.evaluate(coarse, all_db=all_db)
    # At 20% (6 of 30 pairs) every available near-duplicate got its fine similarity.
    assert rows[-1].metrics["DSVR"] == 1.0


def test_bad_inputs_are_named(benchmark):
    dataset, coarse, fine, oracle, _ = benchmark
    with pytest.raises(ValueError, match=r"selector_scores has shape \(4, 39\)"):
        dns_sweep(dataset, coarse, fine, oracle[:, 1:], **COSTS)
    with pytest.raises(ValueError, match="percentages must lie in"):
        dns_sweep(dataset, coarse, fine, oracle, percentages=(0, 150), **COSTS)
    with pytest.raises(ValueError, match="fine similarity function returned shape"):
        dns_sweep(dataset, coarse, lambda row, columns: np.zeros(1), oracle, **COSTS)


def test_table_and_plot(benchmark, tmp_path):
    dataset, coarse, fine, oracle, _ = benchmark
    rows = dns_sweep(dataset, coarse, fine, oracle, **COSTS)
    table = format_table(rows)
    lines = table.strip().splitlines()
    assert lines[0] == "| method | re-ranked | DSVR | CSVR | ISVR | s/query | KB/video |"
    assert len(lines) == 2 + 2 + 21
    assert lines[2].startswith("| coarse-only | - |")
    assert lines[-1] == "| DnS | 100% | 1.0000 | 1.0000 | 1.0000 | 2.012 | 1004 |"

    path = tmp_path / "sweep.png"
    plot_sweep(rows, path, title="synthetic")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="metric 'mAP' is missing"):
        plot_sweep(rows, tmp_path / "other.png", metric="mAP")
