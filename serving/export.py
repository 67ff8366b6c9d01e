"""SavedModels for TF Serving: the DnS networks behind fixed, named signatures.

An export writes versioned SavedModels in TF Serving's layout, plus the server's config files::

    <base>/dns/<version>/            students + selector (always exported together: a selector is
                                     only valid for the students it was trained with)
    <base>/dns_features/<version>/   uint8 frames -> region features      (with a feature extractor)
    <base>/dns_teacher/<version>/    ViSiL similarity of video pairs      (with a teacher)
    <base>/dns_store/<version>/      an index's fine representations, resident (serving.resident_store)
    <base>/models.config             ModelServerConfig listing the models under <base>
    <base>/batching_parameters.txt   BatchingParameters for --enable_batching

Signatures (B: batch, T: frames, R: regions, D: feature dims, Dc: coarse dims, N: targets per
query, C: stored fine size, ``bits / 8`` uint8 for the binarization student, ``D`` float16
otherwise; every one has the batch as its leading axis in every input and output, which TF
Serving's ``--enable_batching`` requires):

``dns``
    ``index`` (also ``serving_default``): ``features`` float32 [B, T, R, D], ``lengths`` int32 [B]
    -> ``coarse`` float32 [B, Dc], ``fine`` [B, T, R, C] (uint8 packed bits | float16, frames past
    a video's length are zero), ``selector`` float32 [B] (self-similarity scores).

    ``fine_similarity``: ``query`` [B, T, R, C], ``query_length`` int32 [B], ``targets``
    [B, N, T', R, C], ``target_lengths`` int32 [B, N] -> ``similarity`` float32 [B, N] (query b
    against its N targets; representations in their stored form; R = 9). One batched graph, the
    in-process fast path's (:mod:`serving.fine_graph`); for binarization students it holds an
    XLA-compiled popcount kernel (CPU servers: ``--xla_cpu_compilation_enabled=true``).

    ``frame_to_frame``: the inputs of ``fine_similarity`` -> ``similarity`` float32
    [B, N, T, T'], the fine student's frame-to-frame matrix of query b and each of its targets
    (zero past the lengths), from which clients localise copied segments
    (:mod:`dns_tf.localization`).

    ``selector_scores``: ``mlp_input`` float32 [B, N, 3] (query score, target score, coarse
    similarity) -> ``score`` float32 [B, N].

    ``coarse_similarity``: ``query`` float32 [B, Dc], ``targets`` float32 [B, N, Dc]
    -> ``similarity`` float32 [B, N].

    ``model_identity``: ``batch`` int32 [B] (any values) -> ``coarse``, ``fine``, ``selector``
    string [B]: the networks' weight fingerprints (:mod:`dns_tf.models.fingerprint`), which
    indexes record and clients check.

    ``calibrate``: ``scores`` float32 [B, N], ``knots_x`` float32 [B, K], ``knots_y`` float32
    [B, K] -> ``calibrated`` float32 [B, N]: the piecewise-linear map through the knots (end values
    outside them), i.e. an index's coarse-to-fine map (``<index>/calibration.json``,
    ``coarse_to_fine.x`` / ``.y``) applied to coarse similarities, so that they merge with fine
    ones (``fine / 2 + 1/2``) on one scale. The knots are inputs because they belong to the index
    (refitted when it grows), not to the networks; maps of different lengths share a batch by
    repeating their last knot.

``dns_features``
    ``features`` (also ``serving_default``): ``frames`` uint8 [T, S, S, 3] (S: the export's frame
    size, 224) -> ``features`` float32 [T, R, D].

``dns_teacher``
    ``similarity`` (also ``serving_default``): ``query`` float32 [B, Tq, R, Dt], ``query_length``
    int32 [B], ``target`` float32 [B, Tt, R, Dt], ``target_length`` int32 [B] -> ``similarity``
    float32 [B] (pair b: query b against target b; raw features, attention runs inside).

Videos are described by lengths, not frame masks, because TF Serving's batching pads every
variable-size axis with the tensor's *first value* (``pad_variable_length_inputs``): a padded mask
would mark the padding as real frames, whereas padding past a length is ignored by construction.
Lengths must be within ``[1, T]``; anything else fails with INVALID_ARGUMENT. Every score is that
of the video, or pair, on its own and unpadded, as the authors' evaluation computes it (the
comparator's pooling would otherwise let padding change numbers): how requests are batched, by
the client or by the server, never changes a result.

Example:

    result = export_models("export/", coarse, fine, selector, version=1)
    # dns-tf serve --model_config_file export/models.config
    # tensorflow_model_server --model_config_file=export/models.config --enable_batching \\
    #     --batching_parameters_file=export/batching_parameters.txt
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import types
from collections.abc import Mapping

import tensorflow as tf

from dns_tf.models.fingerprint import fingerprint
from dns_tf.similarity_fast import comparator_weights
from dns_tf.fine_representation import REGIONS, pack_bits_tf, unpack_bits_tf
from serving.fine_graph import QUERIES_IN_FLIGHT, FineGraph
from serving.model_config import (MODELS_CONFIG_FILE, available_versions,
                                  write_model_server_config)

DNS_MODEL = "dns"
FEATURES_MODEL = "dns_features"
TEACHER_MODEL = "dns_teacher"
MODEL_NAMES = (DNS_MODEL, FEATURES_MODEL, TEACHER_MODEL)
BATCHING_PARAMETERS_FILE = "batching_parameters.txt"
DEFAULT_FRAME_SIZE = 224

# Requests from serving.client stay within these sizes along the batch axis (videos per index
# call, frames per feature call, one query per re-ranking call), so batches of 64 merge requests
# from many clients; a request larger than max_batch_size is refused by TF Serving.
BATCHING_PARAMETERS = """\
# TF Serving BatchingParameters (tensorflow_model_server --enable_batching
# --batching_parameters_file=...). Every dns-tf signature is batch-major; variable-length
# axes (frames, targets) are padded across merged requests and cut by lengths in the graph.
# num_batch_threads is left out: both servers then take the serving machine's cores.
max_batch_size { value: 64 }
batch_timeout_micros { value: 2000 }
max_enqueued_batches { value: 256 }
pad_variable_length_inputs: true
"""

def checked_lengths(lengths: tf.Tensor, videos: tf.Tensor, name: str) -> tf.Tensor:
    """``lengths [...]`` of the padded ``videos [..., T, ...]``, available only once they describe
    them: the same leading shape, and ``1 <= lengths <= T`` (INVALID_ARGUMENT otherwise).

    Everything computed from the lengths waits for the check.
    """
    rank = lengths.shape.rank
    checks = [tf.debugging.assert_equal(tf.shape(lengths), tf.shape(videos)[:rank],
                                        message=f"{name} must have one entry per video"),
              tf.debugging.assert_positive(lengths, message=f"{name} must be >= 1"),
              tf.debugging.assert_less_equal(lengths, tf.cast(tf.shape(videos)[rank], lengths.dtype),
                                             message=f"{name} must be <= the frame axis")]
    with tf.control_dependencies(checks):
        return tf.identity(lengths)


def lengths_to_mask(lengths: tf.Tensor, num_frames: tf.Tensor) -> tf.Tensor:
    """Frame mask ``[..., T]`` float32 of ``lengths [...]``."""
    return tf.sequence_mask(lengths, num_frames, dtype=tf.float32)


def _untracked(**models) -> types.SimpleNamespace:
    """Keras models held out of ``tf.Module`` tracking (a plain namespace is not trackable).

    Tracked Keras models would contribute their own default save signatures (traced from their
    build shapes, wrong for the selector's MLP); a SavedModel only needs their variables, which
    the modules below track explicitly, as Keras' ``ExportArchive`` does.
    """
    return types.SimpleNamespace(**models)


def _variables(*models) -> list:
    return [variable for model in models for variable in model.variables]


class DnSModule(tf.Module):
    """The ``dns`` servable: coarse and fine students and their selector.

    Args:
        coarse: a :class:`~dns_tf.models.CoarseGrainedStudent`.
        fine: a :class:`~dns_tf.models.FineGrainedStudent`.
        selector: the :class:`~dns_tf.models.SelectorNetwork` trained for these students.
    """

    def __init__(self, coarse, fine, selector):
        super().__init__(name=DNS_MODEL)
        if not coarse.dims == fine.dims == selector.dims:
            raise ValueError(f"the networks take different feature sizes: coarse {coarse.dims}, "
                             f"fine {fine.dims}, selector {selector.dims}")
        self._networks = _untracked(coarse=coarse, fine=fine, selector=selector)
        self.network_variables = _variables(coarse, fine, selector)
        self.bits = fine.kind == "binarization"
        dims = fine.dims
        fine_size = fine.bits // 8 if self.bits else dims
        fine_dtype = tf.uint8 if self.bits else tf.float16
        coarse_dims = coarse.output_dims
        self.index = tf.function(self._index, input_signature=[
            tf.TensorSpec([None, None, None, dims], tf.float32, name="features"),
            tf.TensorSpec([None], tf.int32, name="lengths")])
        self.fine_graph = FineGraph(fine.bits if self.bits else None, comparator_weights(fine))
        self.fine_similarity = tf.function(self._fine_similarity, input_signature=[
            tf.TensorSpec([None, None, REGIONS, fine_size], fine_dtype, name="query"),
            tf.TensorSpec([None], tf.int32, name="query_length"),
            tf.TensorSpec([None, None, None, REGIONS, fine_size], fine_dtype, name="targets"),
            tf.TensorSpec([None, None], tf.int32, name="target_lengths")])
        self.frame_to_frame = tf.function(
            self._frame_to_frame, input_signature=self.fine_similarity.input_signature)
        self.selector_scores = tf.function(self._selector_scores, input_signature=[
            tf.TensorSpec([None, None, 3], tf.float32, name="mlp_input")])
        self.coarse_similarity = tf.function(self._coarse_similarity, input_signature=[
            tf.TensorSpec([None, coarse_dims], tf.float32, name="query"),
            tf.TensorSpec([None, None, coarse_dims], tf.float32, name="targets")])
        self.fingerprints = {"coarse": fingerprint(coarse), "fine": fingerprint(fine),
                             "selector": fingerprint(selector)}
        self.model_identity = tf.function(self._model_identity, input_signature=[
            tf.TensorSpec([None], tf.int32, name="batch")])
        self.calibrate = tf.function(self._calibrate, input_signature=[
            tf.TensorSpec([None, None], tf.float32, name="scores"),
            tf.TensorSpec([None, None], tf.float32, name="knots_x"),
            tf.TensorSpec([None, None], tf.float32, name="knots_y")])

    def serving_signatures(self) -> dict:
        return {"serving_default": self.index, "index": self.index,
                "fine_similarity": self.fine_similarity,
                "frame_to_frame": self.frame_to_frame,
                "selector_scores": self.selector_scores,
                "coarse_similarity": self.coarse_similarity,
                "model_identity": self.model_identity,
                "calibrate": self.calibrate}

    def _to_stored(self, fine):
        return pack_bits_tf(fine) if self.bits else tf.cast(fine, tf.float16)

    def _from_stored(self, fine):
        return unpack_bits_tf(fine) if self.bits else tf.cast(fine, tf.float32)

    def _index(self, features, lengths):
        networks = self._networks
        lengths = checked_lengths(lengths, features, "lengths")
        mask = lengths_to_mask(lengths, tf.shape(features)[1])

        def self_similarity(inputs):
            # Each video alone: the comparator's pooling makes the score depend on padding.
            video, length = inputs
            return networks.selector.index_video(video[None, :length])[0, 0]

        return {"coarse": networks.coarse.index_video(features, mask),
                "fine": self._to_stored(networks.fine.index_video(features, mask)),
                "selector": tf.map_fn(self_similarity, (features, lengths),
                                      fn_output_signature=tf.float32)}

    def _fine_similarity(self, query, query_length, targets, target_lengths):
        query_length = checked_lengths(query_length, query, "query_length")
        target_lengths = checked_lengths(target_lengths, targets, "target_lengths")
        # Each query with its targets in one batched graph, the fast path's (serving.fine_graph);
        # queries merged by the server's batching run one after the other (QUERIES_IN_FLIGHT).
        similarity = tf.map_fn(lambda inputs: self.fine_graph.padded_batch_scores(*inputs),
                               (query, query_length, targets, target_lengths),
                               fn_output_signature=tf.TensorSpec([None], tf.float32),
                               parallel_iterations=QUERIES_IN_FLIGHT)
        return {"similarity": similarity}

    def _frame_to_frame(self, query, query_length, targets, target_lengths):
        query_length = checked_lengths(query_length, query, "query_length")
        target_lengths = checked_lengths(target_lengths, targets, "target_lengths")
        fine = self._networks.fine

        def one_query(inputs):
            # Each cell compares one frame pair, so padding changes no cell: no per-pair loop.
            query, query_length, targets, target_lengths = inputs
            query_mask = lengths_to_mask(query_length[None], tf.shape(query)[0])
            target_mask = lengths_to_mask(target_lengths, tf.shape(targets)[1])
            similarity, _ = fine.frame_to_frame_similarity(
                self._from_stored(query)[None], self._from_stored(targets), query_mask, target_mask)
            return similarity                                          # [N, T, T']

        similarity = tf.map_fn(one_query, (query, query_length, targets, target_lengths),
                               fn_output_signature=tf.TensorSpec([None, None, None], tf.float32))
        return {"similarity": similarity}

    def _selector_scores(self, mlp_input):
        shape = tf.shape(mlp_input)
        scores = self._networks.selector.score(tf.reshape(mlp_input, [-1, 3]))
        return {"score": tf.reshape(scores, shape[:2])}

    def _coarse_similarity(self, query, targets):
        return {"similarity": tf.einsum("bd,bnd->bn", query, targets)}

    def _model_identity(self, batch):
        # The networks' weight fingerprints, so clients and indexes can tell exports apart.
        return {network: tf.fill(tf.shape(batch), value)
                for network, value in self.fingerprints.items()}

    def _calibrate(self, scores, knots_x, knots_y):
        checks = [tf.debugging.assert_greater_equal(tf.shape(knots_x)[1], 2,
                                                    message="a score map needs >= 2 knots"),
                  tf.debugging.assert_equal(tf.shape(knots_x), tf.shape(knots_y),
                                            message="knots_x and knots_y differ in shape")]
        with tf.control_dependencies(checks):
            last = tf.shape(knots_x)[1] - 1
        # The segment [x[i-1], x[i]] of each score; scores outside the knots use the end segment
        # with the weight clipped to it, which gives the end value (as np.interp).
        upper = tf.clip_by_value(tf.searchsorted(knots_x, scores, side="right"), 1, last)
        x0, x1 = (tf.gather(knots_x, i, batch_dims=1) for i in (upper - 1, upper))
        y0, y1 = (tf.gather(knots_y, i, batch_dims=1) for i in (upper - 1, upper))
        # A zero-width segment (maps of different lengths in one batch, padded by repeating
        # their last knot) has equal end values: any weight gives them.
        weight = tf.clip_by_value(tf.math.divide_no_nan(scores - x0, x1 - x0), 0.0, 1.0)
        return {"calibrated": y0 + weight * (y1 - y0)}


class FeaturesModule(tf.Module):
    """The ``dns_features`` servable: uint8 RGB frames -> region features.

    Args:
        extractor: a :class:`~dns_tf.features.extractor.FeatureExtractor`.
        frame_size: the side S of the square frames it accepts (region pooling needs a static
            size; the authors' pipeline gives 224).
    """

    def __init__(self, extractor, frame_size: int = DEFAULT_FRAME_SIZE):
        super().__init__(name=FEATURES_MODEL)
        self._networks = _untracked(extractor=extractor)
        self.network_variables = _variables(extractor)
        self.features = tf.function(self._features, input_signature=[
            tf.TensorSpec([None, frame_size, frame_size, 3], tf.uint8, name="frames")])

    def serving_signatures(self) -> dict:
        return {"serving_default": self.features, "features": self.features}

    def _features(self, frames):
        return {"features": self._networks.extractor(frames, training=False)}


class TeacherModule(tf.Module):
    """The ``dns_teacher`` servable: ViSiL similarity of query-target pairs, for labelling.

    Args:
        teacher: a :class:`~dns_tf.models.ViSiLTeacher`.
    """

    def __init__(self, teacher):
        super().__init__(name=TEACHER_MODEL)
        self._networks = _untracked(teacher=teacher)
        self.network_variables = _variables(teacher)
        spec = [None, None, None, teacher.dims]
        self.similarity = tf.function(self._similarity, input_signature=[
            tf.TensorSpec(spec, tf.float32, name="query"),
            tf.TensorSpec([None], tf.int32, name="query_length"),
            tf.TensorSpec(spec, tf.float32, name="target"),
            tf.TensorSpec([None], tf.int32, name="target_length")])

    def serving_signatures(self) -> dict:
        return {"serving_default": self.similarity, "similarity": self.similarity}

    def _similarity(self, query, query_length, target, target_length):
        teacher = self._networks.teacher
        query_length = checked_lengths(query_length, query, "query_length")
        target_length = checked_lengths(target_length, target, "target_length")

        def one_pair(inputs):
            # Each pair unpadded: the comparator's pooling makes scores depend on padding.
            query, query_length, target, target_length = inputs
            return teacher.calculate_video_similarity(teacher.index_video(query[:query_length]),
                                                      teacher.index_video(target[:target_length]))[0, 0]

        similarity = tf.map_fn(one_pair, (query, query_length, target, target_length),
                               fn_output_signature=tf.float32)
        return {"similarity": similarity}


def write_version(module: tf.Module, base_path: str | os.PathLike, version: int) -> pathlib.Path:
    """Saves ``module`` with its ``serving_signatures()`` as ``<base_path>/<version>``, atomically.

    The SavedModel is written to a hidden sibling directory and renamed into place, so a server
    polling ``base_path`` never sees a half-written version.

    Raises:
        FileExistsError: the version exists already (an export never overwrites one).
    """
    base_path = pathlib.Path(base_path)
    target = base_path / str(version)
    if target.exists():
        raise FileExistsError(f"{target} exists already; export a new version (--version)")
    base_path.mkdir(parents=True, exist_ok=True)
    partial = base_path / f".{version}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        tf.saved_model.save(module, str(partial), signatures=module.serving_signatures())
        os.rename(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def write_models_config(base: pathlib.Path, serving_root: str | None = None) -> pathlib.Path:
    """``<base>/models.config`` listing every model exported under ``base`` (the ``dns`` models
    and any resident stores), at ``serving_root`` (default: ``base``'s absolute path)."""
    root = serving_root or str(base.resolve())
    served = {child.name: f"{root.rstrip('/')}/{child.name}" for child in sorted(base.iterdir())
              if child.is_dir() and available_versions(child)}
    return write_model_server_config(base / MODELS_CONFIG_FILE, served)


def next_version(base: str | os.PathLike) -> int:
    """One more than the newest version of any model under ``base`` (1 for a new export)."""
    versions = [0]
    for name in MODEL_NAMES:
        if (pathlib.Path(base) / name).is_dir():
            versions += available_versions(pathlib.Path(base) / name)
    return max(versions) + 1


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What an export wrote: ``{model name: version directory}`` and the config files."""

    version: int
    models: Mapping[str, pathlib.Path]
    models_config: pathlib.Path
    batching_parameters: pathlib.Path


def export_models(base: str | os.PathLike, coarse, fine, selector, *, teacher=None,
                  extractor=None, version: int | None = None, frame_size: int = DEFAULT_FRAME_SIZE,
                  serving_root: str | None = None) -> ExportResult:
    """Exports the DnS networks (and optionally the feature extractor and teacher) under ``base``.

    Args:
        base: the export root; models go to ``<base>/<name>/<version>``.
        coarse, fine, selector: the DnS networks (Keras models).
        teacher: a :class:`~dns_tf.models.ViSiLTeacher` to serve as ``dns_teacher``.
        extractor: a :class:`~dns_tf.features.extractor.FeatureExtractor` to serve as
            ``dns_features``; its output size must be the students' input size.
        version: the version of every model written (default: one more than the newest under
            ``base``, so models exported together share a version).
        frame_size: the frame side ``dns_features`` accepts.
        serving_root: where ``base`` is when the server reads it (e.g. ``/models`` in the Docker
            image); ``models.config`` points there. Default: ``base``'s absolute path.

    Returns:
        An :class:`ExportResult`.
    """
    base = pathlib.Path(base)
    version = next_version(base) if version is None else int(version)
    if version < 1:
        raise ValueError(f"version must be >= 1, got {version}")
    modules = {DNS_MODEL: DnSModule(coarse, fine, selector)}
    if extractor is not None:
        if extractor.dims != fine.dims:
            raise ValueError(f"the feature extractor gives {extractor.dims}-d regions, the students "
                             f"take {fine.dims}-d (use the PCA with dims={fine.dims})")
        modules[FEATURES_MODEL] = FeaturesModule(extractor, frame_size)
    if teacher is not None:
        modules[TEACHER_MODEL] = TeacherModule(teacher)
    for name in modules:  # refuse before writing anything
        if (base / name / str(version)).exists():
            raise FileExistsError(f"{base / name / str(version)} exists already; choose another "
                                  f"--version (next free: {next_version(base)})")
    written = {name: write_version(module, base / name, version) for name, module in modules.items()}
    models_config = write_models_config(base, serving_root)
    batching = base / BATCHING_PARAMETERS_FILE
    batching.write_text(BATCHING_PARAMETERS, encoding="utf-8")
    return ExportResult(version, written, models_config, batching)

