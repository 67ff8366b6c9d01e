"""Running training: resuming after a crash, several workers, the ``dns-tf train`` command line."""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

from dns_tf.cli import main
from dns_tf.data.feature_files import open_writer
from dns_tf.data.pairs import load_pairs, save_pairs
from dns_tf.synthetic.features import SyntheticConfig, make_synthetic_collection
from dns_tf.models import FineGrainedStudent, ViSiLTeacher, load_model
from training.callbacks import resumed_epoch
from training.config import DistillationConfig, PairsConfig
from training.distill import train_student
from training.pairs import global_descriptors
from training.teacher import read_triplets

DIMS = 16
COLLECTION = SyntheticConfig(seed=0, dims=DIMS, queries=3, distractors=10, training_incidents=4,
                             training_distractors=6, max_frames=20)
SYNTHETIC = ["--synthetic", "--synthetic_dims", "16", "--synthetic_queries", "3",
             "--synthetic_distractors", "10", "--synthetic_training_incidents", "4",
             "--synthetic_training_distractors", "6", "--synthetic_max_frames", "20"]


@pytest.fixture(scope="module")
def collection():
    return make_synthetic_collection(COLLECTION)


@pytest.fixture(scope="module")
def pairs(collection):
    """Cheap, deterministic labels: cosine of the global descriptors; each video's 3 nearest
    neighbours are its positives, its 2 farthest videos its negatives."""
    ids = sorted(collection.training_pool)
    descriptors = global_descriptors(collection.features, ids, progress=False)
    similarities = descriptors @ descriptors.T
    labelled = {}
    for query in range(len(ids)):
        order = [int(t) for t in np.argsort(-similarities[query]) if t != query]
        labelled[query] = {pool: {t: float(similarities[query, t]) for t in targets}
                           for pool, targets in (("positives", order[:3]),
                                                 ("negatives", order[-2:]))}
    return ids, labelled


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory, pairs):
    path = tmp_path_factory.mktemp("pairs") / "pairs.pk"
    save_pairs(path, *pairs)
    return str(path)


def assert_same_weights(a, b, atol):
    assert len(a.weights) == len(b.weights)
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, err_msg=x.path)


def test_configs_refuse_what_cannot_work():
    with pytest.raises(ValueError, match="even"):
        DistillationConfig(batch_size=63)
    with pytest.raises(ValueError, match="shard"):
        PairsConfig(shard=2, num_shards=2)
    with pytest.raises(ValueError, match="strategy"):
        DistillationConfig(strategy="tpu")
    assert DistillationConfig().resolved_learning_rate == 1e-4
    assert DistillationConfig(student_type="coarse-grained").resolved_learning_rate == 1e-5


class Crash(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, collection, pairs_file):
    """A run killed after two of three epochs and restarted ends with the weights of a run that
    was never interrupted: BackupAndRestore brings back weights, optimizer state and epoch, and the
    pipeline restarts at that epoch's pairs and augmentations."""
    pairs = load_pairs(pairs_file)
    features = collection.features
    config = DistillationConfig(dims=DIMS, learning_rate=1e-3, batch_size=8, epochs=3,
                                max_frames=24, validate_every=3)
    keras.utils.set_random_seed(0)
    whole = train_student(features, pairs, config, str(tmp_path / "whole"),
                          validation=(collection, features), verbose=0)

    run = tmp_path / "resumed"
    keras.utils.set_random_seed(0)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_student(features, pairs, config, str(run), callbacks=[Crash(2)], verbose=0)
    assert resumed_epoch(str(run / "backup")) == 2
    assert (run / "checkpoint.keras").is_file() and not (run / "student.keras").exists()
    keras.utils.set_random_seed(7)  # another initialisation: the backup must override it
    resumed = train_student(features, pairs, config, str(run),
                            validation=(collection, features), verbose=0)

    assert len(resumed.history["loss"]) == 1  # only the third epoch ran again
    assert_same_weights(resumed.network, whole.network, atol=1e-6)
    assert not (run / "backup").exists()  # a finished run leaves no backup
    saved = load_model(run / "student.keras")
    assert isinstance(saved, FineGrainedStudent)
    assert_same_weights(saved, resumed.network, atol=0)
    assert (run / "logs").is_dir() and load_model(run / "best.keras").count_params()
    assert [epoch for epoch, _ in resumed.validation] == [3]
    assert resumed.validation[0][1]["mAP"] == pytest.approx(whole.validation[0][1]["mAP"],
                                                            abs=1e-6)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_the_same_student_as_one(tmp_path, pairs_file):
    """MultiWorkerMirroredStrategy on loopback: each of two workers gets half of every global
    batch; the result matches one process training on the whole batches."""
    keras.utils.set_random_seed(0)
    initial = tmp_path / "initial.keras"
    FineGrainedStudent(dims=DIMS, attention=True).save(initial)
    arguments = ["train", "student", *SYNTHETIC, "--dims", str(DIMS), "--pairs", pairs_file,
                 "--epochs", "2", "--batch_size", "8", "--learning_rate", "1e-3",
                 "--init", str(initial), "--verbose", "0"]
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    workers = []
    for index in range(2):
        environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}})}
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "dns_tf.cli", *arguments, "--strategy", "multi_worker",
             "--output", str(tmp_path / "two_workers")],
            env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        assert main([*arguments, "--output", str(tmp_path / "one_worker")]) == 0
        outputs = [worker.communicate(timeout=180)[0] for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]
    two = load_model(tmp_path / "two_workers" / "student.keras")
    one = load_model(tmp_path / "one_worker" / "student.keras")
    start = load_model(initial)
    # Compared as training updates, not weights: Adam divides each gradient by its running RMS,
    # so a component whose gradient is near zero turns summation-order rounding (the
    # all-reduce's, and the BLAS kernels', which differ between CPUs: 1.3e-3 on 25 of 18,432
    # elements seen on one CI machine) into a visible fraction of one step. A wrong split of the
    # global batch changes the direction of every tensor's update, far beyond this bound.
    assert len(two.weights) == len(one.weights) == len(start.weights)
    trained = 0
    for x, y, s in zip(two.weights, one.weights, start.weights):
        update_two, update_one = np.asarray(x) - np.asarray(s), np.asarray(y) - np.asarray(s)
        scale = np.linalg.norm(update_one)
        trained += scale > 0
        assert np.linalg.norm(update_two - update_one) <= 0.05 * scale + 1e-6, x.path
    assert trained >= len(one.trainable_weights) // 2  # it did train


def test_train_help_lists_programs_and_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(program in text for program in ("teacher", "pairs", "student", "selector"))
    with pytest.raises(SystemExit):
        main(["train", "student", "--help"])
    text = capsys.readouterr().out
    for flag in ("--learning_rate", "--r_parameter", "--strategy", "--synthetic_dims",
                 "--features", "--pairs", "--validate_every"):
        assert flag in text


def test_cli_labels_pairs_in_shards_and_merges_them(tmp_path, collection, capsys):
    keras.utils.set_random_seed(0)
    teacher = tmp_path / "teacher.keras"
    ViSiLTeacher(dims=DIMS).save(teacher)
    shards = [str(tmp_path / f"pairs-{i}.pk") for i in range(2)]
    for i, shard in enumerate(shards):
        assert main(["train", "pairs", *SYNTHETIC, "--model", str(teacher), "--candidates", "4",
                     "--random_negatives", "2", "--max_frames", "16", "--shard", str(i),
                     "--num_shards", "2", "--output", shard]) == 0
    merged = str(tmp_path / "pairs.pk")
    assert main(["train", "pairs", "--merge", *shards, "--output", merged]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    pool = sorted(collection.training_pool)
    assert report["queries"] == len(pool) and report["pairs"] == 6 * len(pool)
    pairs = load_pairs(merged)
    assert sorted(pairs.index) == pool
    assert sorted(pairs.index[q] for q in pairs.pairs) == pool


def test_cli_distils_a_student_from_an_hdf5_file(tmp_path, collection, pairs_file, capsys):
    features = tmp_path / "features.h5"
    with open_writer(str(features)) as writer:
        for video in collection.training_pool:
            writer.write(video, collection.features[video])
    output = tmp_path / "student"
    assert main(["train", "student", "--features", str(features), "--pairs", pairs_file,
                 "--dims", str(DIMS), "--epochs", "1", "--batch_size", "8", "--max_frames", "16",
                 "--output", str(output), "--verbose", "0"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["saved"] == str(output / "student.keras")
    assert report["final"]["distillation_loss"] > 0
    assert isinstance(load_model(output / "student.keras"), FineGrainedStudent)


def test_cli_explains_bad_input(tmp_path, pairs_file, capsys):
    missing = str(tmp_path / "missing.h5")
    assert main(["train", "student", "--features", missing, "--pairs", pairs_file,
                 "--output", str(tmp_path / "run")]) == 2
    assert missing in capsys.readouterr().err
    assert main(["train", "student", "--pairs", pairs_file, "--output",
                 str(tmp_path / "run")]) == 2
    assert "--features" in capsys.readouterr().err
    # Pairs over videos that the collection does not have.
    other = str(tmp_path / "other.pk")
    save_pairs(other, ["a", "b", "c"], {0: {"positives": {1: 0.9}, "negatives": {2: -0.1}}})
    assert main(["train", "student", *SYNTHETIC, "--dims", str(DIMS), "--pairs", other,
                 "--output", str(tmp_path / "run")]) == 2
    assert "no query has both a positive and a negative" in capsys.readouterr().err


def test_the_released_teacher_labels_pairs(tmp_path, checkpoints, capsys):
    """The authors' visil.pth (here the reference's 3840-d checkpoint) labels pairs as it is."""
    synthetic = ["--synthetic", "--synthetic_dims", "3840", "--synthetic_queries", "1",
                 "--synthetic_distractors", "2", "--synthetic_training_incidents", "1",
                 "--synthetic_training_distractors", "3", "--synthetic_max_frames", "12"]
    output = str(tmp_path / "pairs.pk")
    assert main(["train", "pairs", *synthetic, "--model", str(checkpoints / "visil_teacher.pth"),
                 "--candidates", "3", "--random_negatives", "1", "--positive_threshold", "-1",
                 "--output", output]) == 0
    pairs = load_pairs(output)
    assert len(pairs.pairs) == len(pairs.index) == 12  # one cluster of 9 and 3 distractors
    scores = [s for pools in pairs.pairs.values() for s in pools["positives"].values()]
    assert len(scores) == 4 * 12 and all(-1.0 <= s <= 1.0 for s in scores)


def test_triplet_files_are_read_with_clear_errors(tmp_path):
    path = tmp_path / "triplets.txt"
    path.write_text("# anchor positive negative\na b c\n\nd e f\n")
    assert read_triplets(path) == [("a", "b", "c"), ("d", "e", "f")]
    path.write_text("a b c\nd e\n")
    with pytest.raises(ValueError, match=r"triplets.txt:2: expected 'anchor positive negative'"):
        read_triplets(path)


def test_train_benchmark_reports_steps_per_second(capsys):
    assert main(["bench", "train", "--quick", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["benchmark"] == "train" and result["steps_per_s"] > 0
    assert result["settings"]["pairs_per_step"] == 8
