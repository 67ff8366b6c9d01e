"""The demo's results.json, the report and plot drawn from it, and its training triplets."""

import json

import keras
import numpy as np
import pytest

from dns_tf.demo import report as demo_report
from dns_tf.demo import steps as demo
from dns_tf.evaluation.datasets import FIVR
from dns_tf.synthetic import videos as vc
from training.distill import build_student


def _method(dsvr, ms, kb):
    return {"DSVR": dsvr, "CSVR": dsvr, "ISVR": dsvr, "ms_per_query": ms, "kb_per_video": kb}


def _results(sweep_values, paper_values, coarse=0.80, fine=0.90):
    def sweep(values):
        return [{"percentage": 5 * i, "DSVR": v, "CSVR": v, "ISVR": v, "ms_per_query": 1 + i}
                for i, v in enumerate(values)]
    return {"merge": "calibrated",
            "methods": {"teacher": _method(0.95, 60.0, 400.0),
                        "fine_attention": _method(fine, 40.0, 100.0),
                        "fine_binarization": _method(0.88, 30.0, 6.0),
                        "coarse": _method(coarse, 0.2, 1.0)},
            "sweep": sweep(sweep_values), "sweep_paper": sweep(paper_values)}


RISING = [0.80, 0.85, 0.89] + [0.90] * 18  # 0 %, 5 %, 10 %, ... 100 %
DIPPING = [0.80, 0.70, 0.75] + [0.78] * 17 + [0.90]


def test_conclusions_follow_the_issues_criteria():
    good = demo_report.conclusions(_results(RISING, DIPPING))
    assert all(held for held, _ in good.values())
    assert "90 % of the gap" in good["DnS at 10 % recovers 80 % of the gap"][1]
    bad = demo_report.conclusions(_results(DIPPING, RISING, fine=0.82))
    assert not any(held for held, _ in bad.values())
    assert "lowest 0.700 at 5 %" in bad["no default point below coarse - 0.005"][1]


def test_coarse_reach_bounds_what_reranking_ten_percent_can_recover():
    database = [f"d{i:02d}" for i in range(20)]
    dataset = FIVR({"demo": {"queries": ["q0", "q1"], "database": set(database)},
                    "annotation": {"q0": {"ND": ["d00", "d01"]}, "q1": {"DS": ["d02", "d03"]}}},
                   version="demo")
    coarse = np.tile(np.linspace(1.0, 0.05, 20), (2, 1))  # d00 first, d19 last, for both
    coarse[0, [1, 9]] = coarse[0, [9, 1]]  # q0's d01 sits at rank 10, beyond the top 10 % (2)
    coarse[1, [0, 1, 2, 3]] = coarse[1, [2, 3, 0, 1]]  # q1's two are its top 2
    perfect = np.zeros((2, 20))
    perfect[0, :2] = perfect[1, 2:4] = 1.0
    reach = demo_report.coarse_reach(dataset, coarse, {"fine_attention": perfect,
                                                       "teacher": 1.0 - perfect})
    assert reach["relevant_share"] == pytest.approx(0.75)
    # q0: d00 at 1, d01 left at 10 -> AP (1 + 2 / 10) / 2; q1 stays perfect.
    assert reach["DSVR_reranked_by"]["fine_attention"] == pytest.approx((0.6 + 1.0) / 2)
    # A stage that inverts the top 2: q0's d00 falls to 2 (AP (1/2 + 2/10) / 2), q1 unchanged.
    assert reach["DSVR_reranked_by"]["teacher"] == pytest.approx((0.35 + 1.0) / 2)
    text = demo_report.format_reach({"coarse_reach": reach})
    assert "top 10 % holds 75 % of the queries' relevant videos" in text
    assert "S^f_A (attention) 0.800; ViSiL teacher 0.675" in text


def test_report_and_plot_are_drawn_from_results_json(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(_results(RISING, DIPPING)))
    (tmp_path / "timings.json").write_text(json.dumps(
        {"generate videos": {"wall_s": 61.0, "cpu_s": 100.0}}))
    report = demo_report.write_report(tmp_path, "a collection",
                                      searched=[{"percentage": 10, "DSVR": 0.891,
                                                 "ms_per_query": 5.5}])
    text = report.read_text()
    assert "| S^f_A (attention) | 0.900 | 0.900 | 0.900 | 40.0 | 100.00 |" in text
    assert "| 10 % | 0.890 | 0.750 | 3.0 |" in text  # default and paper side by side
    assert "| 10 % | 0.891 | 5.5 |" in text
    assert "| generate videos | 61 | 100 |" in text
    assert "- yes: fine beats coarse by 0.05" in text
    png = (tmp_path / "dns_sweep.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000


def test_triplets_take_half_their_negatives_from_the_anchors_siblings(tmp_path):
    config = vc.CollectionConfig(num_queries=3, siblings=2, num_distractors=4)
    plans = vc.plan_collection(config)
    (tmp_path / "collection.json").write_text(json.dumps(
        vc._describe(config, plans, vc._keys(plans))))
    collection = vc.load_collection(tmp_path)
    triplets = demo.labelled_triplets(collection, seed=0)

    def sources(video_id):
        return set(collection.videos[video_id].contains)

    for anchor, positive, negative in triplets:  # a shared source the negative lacks
        assert (sources(anchor) & sources(positive)) - sources(negative)
    for query in collection.queries:  # a query belongs to its own group only
        negatives = [n for a, _, n in triplets if a == query]
        assert len(negatives) == 2
        assert sum(n.startswith(f"{query}_sib") for n in negatives) == 1


def test_pools_split_halfway_between_related_and_unrelated_teacher_scores(tmp_path):
    config = vc.CollectionConfig(num_queries=2, siblings=1, num_distractors=2)
    plans = vc.plan_collection(config)
    (tmp_path / "collection.json").write_text(json.dumps(
        vc._describe(config, plans, vc._keys(plans))))
    collection = vc.load_collection(tmp_path)
    index = ("q000", "q000_nd0", "q001", "d000")
    # A teacher that scores everything above 0: related pairs ~0.6, unrelated ~0.4.
    pairs = {0: {"positives": {1: 0.62, 2: 0.41, 3: 0.39}, "negatives": {}},
             2: {"positives": {0: 0.40, 3: 0.42}, "negatives": {}}}
    threshold = demo.separating_threshold(pairs, index, collection)
    assert threshold == pytest.approx((0.62 + 0.405) / 2)
    split = demo.split_pools(pairs, threshold)
    assert split[0] == {"positives": {1: 0.62}, "negatives": {2: 0.41, 3: 0.39}}
    assert split[2] == {"positives": {}, "negatives": {0: 0.40, 3: 0.42}}


def test_each_student_starts_from_weights_drawn_from_the_seed_alone(tmp_path, monkeypatch):
    """Whatever ran before (cached stages, other networks), ``--seed`` fixes where each student
    starts: S^c, distilled from a few dozen videos, keeps most of its ranking from there."""
    initial = {}

    class Trained:
        def __init__(self, network):
            self.network = network

    def record(features, pairs, config, output_dir, verbose):
        network = build_student(config)
        initial.setdefault(config.student_type + str(config.binarization), []).append(
            [w.copy() for w in network.get_weights()])
        return Trained(network)

    monkeypatch.setattr(demo, "train_student", record)
    for seed, output in ((3, "a"), (3, "b"), (4, "c")):
        keras.utils.set_random_seed(len(initial))  # other work left the generators elsewhere
        np.random.rand(7)
        demo.Demo(demo.DemoConfig(output=str(tmp_path / output), seed=seed,
                                  progress=False)).students(pairs=None, features=None)
    assert len(initial) == 3
    for runs in initial.values():
        first, again, other_seed = runs
        assert all(np.array_equal(a, b) for a, b in zip(first, again))
        assert not all(np.array_equal(a, b) for a, b in zip(first, other_seed))
