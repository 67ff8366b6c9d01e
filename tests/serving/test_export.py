"""SavedModel export: every servable, reloaded with ``tf.saved_model.load``, computes what the Keras
networks (and the authors' reference numbers) compute, behind the documented signatures."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import tensorflow as tf

from dns_tf.calibration import fit_coarse_to_fine
from dns_tf.cli import main as cli_main
from dns_tf.features.extractor import FeatureExtractor
from dns_tf.fine_representation import pack_bits, pack_bits_tf, unpack_bits, unpack_bits_tf
from export_fixtures import load_networks
from serving.batching import read_batching_parameters
from serving.export import BATCHING_PARAMETERS_FILE, export_models, next_version
from serving.model_config import (MODELS_CONFIG_FILE, read_model_server_config,
                                  resolve_servable_models)

VERSION = 3
F32, I32, U8, F16 = tf.float32, tf.int32, tf.uint8, tf.float16
pytestmark = pytest.mark.slow  # the tests share exports of every servable (~10 s)

# signature -> ({input: (dtype, shape)}, {output: (dtype, shape)}), None = any size; as in the README.
DNS_SIGNATURES = {
    "index": ({"features": (F32, [None, None, None, 512]), "lengths": (I32, [None])},
              {"coarse": (F32, [None, 128]), "fine": (U8, [None, None, None, 64]),
               "selector": (F32, [None])}),
    "fine_similarity": ({"query": (U8, [None, None, 9, 64]), "query_length": (I32, [None]),
                         "targets": (U8, [None, None, None, 9, 64]),
                         "target_lengths": (I32, [None, None])},
                        {"similarity": (F32, [None, None])}),
    "frame_to_frame": ({"query": (U8, [None, None, 9, 64]), "query_length": (I32, [None]),
                        "targets": (U8, [None, None, None, 9, 64]),
                        "target_lengths": (I32, [None, None])},
                       {"similarity": (F32, [None, None, None, None])}),
    "selector_scores": ({"mlp_input": (F32, [None, None, 3])}, {"score": (F32, [None, None])}),
    "coarse_similarity": ({"query": (F32, [None, 128]), "targets": (F32, [None, None, 128])},
                          {"similarity": (F32, [None, None])}),
    "model_identity": ({"batch": (I32, [None])},
                       {name: (tf.string, [None]) for name in ("coarse", "fine", "selector")}),
    "calibrate": ({"scores": (F32, [None, None]), "knots_x": (F32, [None, None]),
                   "knots_y": (F32, [None, None])}, {"calibrated": (F32, [None, None])}),
}
FEATURES_SIGNATURE = ({"frames": (U8, [None, 224, 224, 3])}, {"features": (F32, [None, 9, 512])})
TEACHER_SIGNATURE = ({"query": (F32, [None, None, None, 3840]), "query_length": (I32, [None]),
                      "target": (F32, [None, None, None, 3840]), "target_length": (I32, [None])},
                     {"similarity": (F32, [None])})


@pytest.fixture(scope="module")
def networks(checkpoints):
    return load_networks(checkpoints)


@pytest.fixture(scope="module")
def extractor(checkpoints):
    return FeatureExtractor.from_official(checkpoints / "resnet50_torchvision.npz",
                                          checkpoints / "pca_resnet50.npz", dims=512)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, networks, extractor):
    """Everything, with the binarization student; and the attention student alone."""
    root = tmp_path_factory.mktemp("export")
    full = export_models(root / "bin", networks["coarse"], networks["bin"], networks["selector"],
                         teacher=networks["teacher"], extractor=extractor, version=VERSION)
    attention = export_models(root / "att", networks["coarse"], networks["att"],
                              networks["selector"])
    return full, attention


@pytest.fixture(scope="module")
def loaded(exported):
    full, attention = exported
    models = {name: tf.saved_model.load(str(path)) for name, path in full.models.items()}
    models["dns_att"] = tf.saved_model.load(str(attention.models["dns"]))
    return models


def run(model, signature, **inputs):
    outputs = model.signatures[signature](**{name: tf.constant(value) for name, value in inputs.items()})
    return {name: value.numpy() for name, value in outputs.items()}


def lengths_of(mask):
    return mask.sum(axis=1).astype(np.int32)


def test_export_writes_tf_serving_layout_and_config(exported):
    full, attention = exported
    base = full.models_config.parent
    assert full.version == VERSION and attention.version == 1
    assert {name: path.relative_to(base) for name, path in full.models.items()} == {
        name: pathlib.Path(name, str(VERSION)) for name in ("dns", "dns_features", "dns_teacher")}
    for path in full.models.values():
        assert (path / "saved_model.pb").is_file() and (path / "variables").is_dir()
        assert [child.name for child in path.parent.iterdir()] == [str(VERSION)]  # no leftovers
    config = read_model_server_config(base / MODELS_CONFIG_FILE)
    served = {model.name: model for model in resolve_servable_models(config)}
    assert sorted(served) == ["dns", "dns_features", "dns_teacher"]
    assert all(model.versions == (VERSION,) and model.base_path == (base / name).resolve()
               for name, model in served.items())
    parameters = read_batching_parameters(base / BATCHING_PARAMETERS_FILE)
    assert parameters.pad_variable_length_inputs and parameters.max_batch_size.value == 64
    assert [model.name for model in resolve_servable_models(
        read_model_server_config(attention.models_config))] == ["dns"]


def signature_io(model, name):
    function = model.signatures[name]
    _, inputs = function.structured_input_signature
    return ({key: (spec.dtype, spec.shape.as_list()) for key, spec in inputs.items()},
            {key: (spec.dtype, spec.shape.as_list())
             for key, spec in function.structured_outputs.items()})


def test_signatures_have_the_documented_names_dtypes_and_shapes(loaded):
    assert set(loaded["dns"].signatures) == {"serving_default", *DNS_SIGNATURES}
    for name, expected in DNS_SIGNATURES.items():
        assert signature_io(loaded["dns"], name) == expected, name
    assert signature_io(loaded["dns"], "serving_default") == DNS_SIGNATURES["index"]
    assert signature_io(loaded["dns_features"], "features") == FEATURES_SIGNATURE
    assert signature_io(loaded["dns_teacher"], "similarity") == TEACHER_SIGNATURE
    # The attention student's representations travel as float16 [.., 512].
    inputs, outputs = signature_io(loaded["dns_att"], "fine_similarity")
    assert inputs["targets"] == (F16, [None, None, None, 9, 512])
    assert signature_io(loaded["dns_att"], "index")[1]["fine"] == (F16, [None, None, None, 512])


def test_index_matches_keras_and_reference(loaded, networks, parity):
    videos, masks = parity["inputs.videos"], parity["inputs.masks"]
    lengths = lengths_of(masks)
    got = run(loaded["dns"], "index", features=videos, lengths=lengths)
    np.testing.assert_allclose(got["coarse"], networks["coarse"].index_video(videos, masks),
                               atol=1e-6)
    np.testing.assert_allclose(got["coarse"], parity["cg.index"], atol=1e-5)
    codes = np.asarray(networks["bin"].index_video(videos, masks))
    np.testing.assert_array_equal(got["fine"], pack_bits(codes))
    np.testing.assert_array_equal(unpack_bits(got["fine"][0, :7]), parity["fg_bin.index"][0, :7])
    assert not got["fine"][2, 5:].any()  # frames past a length are zero
    # Self-similarity of each video alone, as the authors index a collection.
    alone = [networks["selector"].index_video(video[None, :length])[0, 0]
             for video, length in zip(videos, lengths)]
    np.testing.assert_allclose(got["selector"], alone, atol=1e-6)

    att = run(loaded["dns_att"], "index", features=videos, lengths=lengths)
    assert att["fine"].dtype == np.float16
    np.testing.assert_array_equal(
        att["fine"], np.asarray(networks["att"].index_video(videos, masks)).astype(np.float16))


@pytest.mark.parametrize("student", ["bin", "att"])
def test_fine_similarity_is_each_pair_alone(loaded, networks, parity, student):
    model = loaded["dns" if student == "bin" else "dns_att"]
    videos, masks = parity["inputs.videos"], parity["inputs.masks"]
    lengths = lengths_of(masks)
    targets = run(model, "index", features=videos, lengths=lengths)["fine"]
    query = run(model, "index", features=parity["inputs.query"], lengths=np.array([9], np.int32))
    got = run(model, "fine_similarity", query=query["fine"], query_length=np.array([9], np.int32),
              targets=targets[None], target_lengths=lengths[None])["similarity"]
    fine = networks[student]
    query_codes = fine.index_video(parity["inputs.query"][0])
    alone = [fine.calculate_video_similarity(query_codes, fine.index_video(video[:length]))[0, 0]
             for video, length in zip(videos, lengths)]
    np.testing.assert_allclose(got[0], alone, atol=1e-5 if student == "bin" else 2e-3)  # float16
    # The reference padded its batch to 12 frames: video 1 (12 frames) is the unpadded pair.
    np.testing.assert_allclose(got[0, 1], parity[f"fg_{student}.similarity"][0, 1],
                               atol=1e-5 if student == "bin" else 2e-3)


def test_fine_similarity_ignores_padding(loaded, networks, parity):
    """Padding by the client or by TF Serving's batching (with each tensor's first value) leaves
    every score as the pair's alone; videos under 4 frames count as padded with zero similarity."""
    model = loaded["dns"]
    videos, masks = parity["inputs.videos"], parity["inputs.masks"]
    lengths = lengths_of(masks)
    fine = run(model, "index", features=videos, lengths=lengths)["fine"]

    def alone(query, query_length, target, target_length):
        return run(model, "fine_similarity", query=query[None, :query_length],
                   query_length=np.array([query_length], np.int32),
                   targets=target[None, None, :target_length],
                   target_lengths=np.array([[target_length]], np.int32))["similarity"][0, 0]

    # Request 0: video 0 (7 frames) against videos 1 and 2; request 1: video 2 cut to 3 frames
    # against video 1, padded along frames and targets to request 0's sizes.
    query = np.stack([fine[0, :7], np.concatenate([fine[2, :3], np.repeat(fine[2, :1], 4, 0)])])
    targets = np.stack([fine[1:], np.stack([fine[1], fine[1]])])
    merged = run(model, "fine_similarity", query=query, query_length=np.array([7, 3], np.int32),
                 targets=targets, target_lengths=np.array([[12, 5], [12, 12]], np.int32))
    expected = [[alone(fine[0], 7, fine[1], 12), alone(fine[0], 7, fine[2], 5)],
                [alone(fine[2], 3, fine[1], 12)] * 2]
    np.testing.assert_allclose(merged["similarity"], expected, atol=1e-6)
    student = networks["bin"]
    short = np.concatenate([student.index_video(videos[2, :3]), np.zeros((1, 9, 512), np.float32)])
    np.testing.assert_allclose(expected[1][0], student.calculate_video_similarity(
        short, student.index_video(videos[1]))[0, 0], atol=1e-5)


def test_frame_to_frame_is_the_students_matrix_of_each_pair(loaded, networks, parity):
    """The matrices clients localise copies from: the fine student's, zero past the lengths."""
    videos, masks = parity["inputs.videos"], parity["inputs.masks"]
    lengths = lengths_of(masks)
    fine = run(loaded["dns"], "index", features=videos, lengths=lengths)["fine"]
    got = run(loaded["dns"], "frame_to_frame", query=fine[:2], query_length=lengths[:2],
              targets=np.stack([fine, fine[::-1]]),
              target_lengths=np.stack([lengths, lengths[::-1]]))["similarity"]
    assert got.shape == (2, 3, 12, 12)
    student = networks["bin"]
    for b in range(2):
        for n, target in enumerate((range(3), range(2, -1, -1))[b]):
            expected, _ = student.frame_to_frame_similarity(
                student.index_video(videos[b, :lengths[b]]),
                student.index_video(videos[target, :lengths[target]]))
            np.testing.assert_allclose(got[b, n, :lengths[b], :lengths[target]], expected[0],
                                       atol=1e-6)
            assert not got[b, n, lengths[b]:].any() and not got[b, n, :, lengths[target]:].any()


def test_selector_and_coarse_similarity_match_reference(loaded, networks, parity):
    got = run(loaded["dns"], "selector_scores", mlp_input=parity["selector.mlp_input"][None])
    np.testing.assert_allclose(got["score"], parity["selector.score"].T, atol=1e-5)
    got = run(loaded["dns"], "coarse_similarity", query=parity["cg.query_index"],
              targets=parity["cg.index"][None])
    np.testing.assert_allclose(got["similarity"], parity["cg.similarity"], atol=1e-5)


def test_calibrate_equals_the_in_process_score_map(loaded, parity):
    """The served coarse-to-fine map gives the retriever's numbers: two maps fitted (isotonic
    and quantile) on the reference coarse similarities against a fine-like monotone-plus-noise
    target, applied to those similarities, to the knots themselves and past both ends."""
    rng = np.random.default_rng(3)
    coarse = np.asarray(parity["cg.similarity"], np.float64).ravel()
    coarse = np.concatenate([coarse, rng.uniform(-0.2, 0.9, 300)])
    fine = 0.5 + 0.4 * np.clip(coarse, 0, None) ** 2 + rng.normal(0, 0.03, coarse.size)
    maps = [fit_coarse_to_fine(coarse, fine, method) for method in ("isotonic", "quantile")]
    width = max(len(m.x) for m in maps)
    # Batch-major knots: the shorter map is padded by repeating its last knot (zero-width
    # segments past the end still give the end value).
    knots_x = np.stack([np.pad(m.x, (0, width - len(m.x)), mode="edge") for m in maps])
    knots_y = np.stack([np.pad(m.y, (0, width - len(m.y)), mode="edge") for m in maps])
    scores = np.concatenate([coarse, maps[0].x, maps[1].x, [-3.0, 3.0]]).astype(np.float32)
    scores = np.stack([scores, scores[::-1]])
    got = run(loaded["dns"], "calibrate", scores=scores, knots_x=knots_x.astype(np.float32),
              knots_y=knots_y.astype(np.float32))["calibrated"]
    for row, score_map in enumerate(maps):
        np.testing.assert_allclose(got[row], score_map(scores[row]), atol=1e-5)
    # Monotone up to float32 rounding at the knots.
    assert np.all(np.diff(got[0][np.argsort(scores[0], kind="stable")]) >= -1e-6)


def test_teacher_pairs_match_keras_and_reference(loaded, networks, parity):
    query, target = parity["teacher.query_features"], parity["teacher.target_features"]
    teacher = networks["teacher"]
    # Pair 0 as the reference; pair 1 swapped, its padding filled with junk frames.
    junk = query[:2]
    queries = np.stack([query, np.concatenate([target, junk])])
    targets = np.stack([np.concatenate([target, junk]), query])
    got = run(loaded["dns_teacher"], "similarity", query=queries,
              query_length=np.array([9, 7], np.int32), target=targets,
              target_length=np.array([7, 9], np.int32))["similarity"]
    swapped = teacher.calculate_video_similarity(teacher.index_video(target),
                                                 teacher.index_video(query))
    np.testing.assert_allclose(got, [parity["teacher.similarity"][0], swapped[0, 0]], atol=1e-5)


def test_features_match_reference_extractor(loaded, parity):
    got = run(loaded["dns_features"], "features", frames=parity["fe.frames"])["features"]
    np.testing.assert_allclose(got, parity["fe.regions_pca512"], atol=1e-4)


def test_every_signature_serves_videos_shorter_than_the_comparator_needs(loaded, networks,
                                                                         parity):
    """Lengths 1-3 (documented valid): finite numbers equal to the Keras networks' on the video
    alone, which treat them as padded with zero-similarity frames."""
    videos = parity["inputs.videos"]
    lengths = np.array([1, 2, 3], np.int32)
    got = run(loaded["dns"], "index", features=videos, lengths=lengths)
    alone = [networks["selector"].index_video(video[None, :length])[0, 0]
             for video, length in zip(videos, lengths)]
    assert np.isfinite(got["selector"]).all() and np.isfinite(got["coarse"]).all()
    np.testing.assert_allclose(got["selector"], alone, atol=1e-6)
    fine = networks["bin"]
    similarity = run(loaded["dns"], "fine_similarity", query=got["fine"][:1],
                     query_length=lengths[:1], targets=got["fine"][None],
                     target_lengths=lengths[None])["similarity"]
    expected = [fine.calculate_video_similarity(fine.index_video(videos[0, :1]),
                                                fine.index_video(video[:length]))[0, 0]
                for video, length in zip(videos, lengths)]
    np.testing.assert_allclose(similarity[0], expected, atol=1e-5)
    teacher = networks["teacher"]
    query, target = parity["teacher.query_features"], parity["teacher.target_features"]
    served = run(loaded["dns_teacher"], "similarity", query=query[None], target=target[None],
                 query_length=np.array([2], np.int32), target_length=np.array([3], np.int32))
    keras_score = teacher.calculate_video_similarity(teacher.index_video(query[:2]),
                                                     teacher.index_video(target[:3]))[0, 0]
    np.testing.assert_allclose(served["similarity"], [keras_score], atol=1e-5)
    assert np.isfinite(served["similarity"]).all()


@pytest.mark.parametrize("lengths, message", [
    ([0, 12, 5], "lengths must be >= 1"), ([7, 13, 5], "lengths must be <= the frame axis"),
    ([5], "lengths must have one entry per video"), ([7, 12, 5, 5], "one entry per video")])
def test_lengths_out_of_range_or_of_another_batch_fail_with_invalid_argument(loaded, parity, lengths,
                                                                               message):
    assert len(parity["inputs.videos"]) == 3
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        run(loaded["dns"], "index", features=parity["inputs.videos"],
            lengths=np.array(lengths, np.int32))


def test_target_lengths_of_another_shape_than_the_targets_fail_with_invalid_argument(loaded):
    size = loaded["dns"].signatures["fine_similarity"].structured_input_signature[1]["query"].shape[-1]
    with pytest.raises(tf.errors.InvalidArgumentError, match="target_lengths must have one entry"):
        run(loaded["dns"], "fine_similarity", query=np.zeros((1, 4, 9, size), np.uint8),
            query_length=np.array([4], np.int32), targets=np.zeros((1, 2, 4, 9, size), np.uint8),
            target_lengths=np.array([[4]], np.int32))


def test_graph_bit_packing_is_numpy_packbits(rng=np.random.default_rng(0)):
    codes = rng.choice([-1.0, 0.0, 1.0], size=(2, 3, 9, 64)).astype(np.float32)
    packed = pack_bits_tf(tf.constant(codes)).numpy()
    np.testing.assert_array_equal(packed, pack_bits(codes))
    np.testing.assert_array_equal(unpack_bits_tf(tf.constant(packed)).numpy(), unpack_bits(packed))


def test_export_refuses_to_overwrite_and_mismatched_extractor(tmp_path, networks, extractor):
    coarse, fine, selector = networks["coarse"], networks["bin"], networks["selector"]
    export_models(tmp_path, coarse, fine, selector, version=2)
    assert next_version(tmp_path) == 3
    with pytest.raises(FileExistsError, match="exists already"):
        export_models(tmp_path, coarse, fine, selector, teacher=networks["teacher"], version=2)
    assert not (tmp_path / "dns_teacher").exists()  # refused before writing anything
    with pytest.raises(ValueError, match="3840-d regions, the students take 512-d"):
        unwhitened = FeatureExtractor(extractor.backbone)
        export_models(tmp_path, coarse, fine, selector, extractor=unwhitened)


def test_export_command(tmp_path, checkpoints, networks, capsys):
    networks["bin"].save(tmp_path / "fine.keras")
    args = ["export", "--coarse", str(checkpoints / "cg_student.pth"),
            "--fine", str(tmp_path / "fine.keras"), "--selector", str(checkpoints / "selector.pth"),
            "--out", str(tmp_path / "out"), "--serving_root", "/models"]
    assert cli_main(args) == 0
    assert "dns: version 1 -> " in capsys.readouterr().out
    config = read_model_server_config(tmp_path / "out" / MODELS_CONFIG_FILE)
    assert [(m.name, m.base_path) for m in config.model_config_list.config] == [("dns", "/models/dns")]
    assert cli_main(args[:-2] + ["--version", "1"]) == 1
    assert "exists already" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["export", "--coarse", str(checkpoints / "cg_student.pth")])
    assert "required: --fine, --selector, --out" in capsys.readouterr().err
