"""Builds Keras models from the authors' checkpoints (state_dicts read without torch).

The kind of network is recognised from the state_dict's keys, its sizes from the tensors'
shapes (transformer heads, which no shape reveals, from the saved ``args``, default 8). Every
tensor is checked against the Keras weight it fills; a mismatch names both.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any, Callable

import numpy as np

from dns_tf.convert.torch_pickle import CheckpointFormatError, load_torch_file
from dns_tf.models import (CoarseGrainedStudent, FineGrainedStudent, SelectorNetwork, ViSiLTeacher,
                           load_model)

# Bookkeeping tensors with no counterpart in Keras.
_IGNORED_SUFFIXES = ("num_batches_tracked",)


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the network they seem to describe."""


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a checkpoint container: zip-format ``.pth`` or ``.npz``.

    Returns a dict; for the authors' training checkpoints ``{'model', 'args', ...}``.
    """
    path = os.fspath(path)
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        except FileNotFoundError:
            raise
        except Exception as error:  # a damaged zip or .npy header, or object arrays
            raise CheckpointFormatError(f"{path}: not a readable .npz checkpoint "
                                        f"({type(error).__name__}: {error})") from error
    checkpoint = load_torch_file(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointFormatError(
            f"{path}: expected a dict or state_dict, got {type(checkpoint).__name__}")
    return checkpoint


def split_checkpoint(checkpoint: dict[str, Any],
                     source: str = "checkpoint") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(state_dict, args)`` of a training checkpoint or a plain state_dict."""
    if "model" in checkpoint and isinstance(checkpoint["model"], dict):
        state = checkpoint["model"]
        args = checkpoint.get("args")
        if isinstance(args, argparse.Namespace):
            args = vars(args)
        elif not isinstance(args, (dict, type(None))):
            raise CheckpointFormatError(f"{source}: 'args' is a {type(args).__name__}, expected "
                                        "an argparse.Namespace or a dict")
        args = dict(args or {})
    else:
        state, args = checkpoint, {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise CheckpointFormatError(f"{source}: state_dict entry {key!r:.60} holds a "
                                        f"{type(value).__name__}, expected a tensor")
    state = {re.sub(r"^module\.", "", key): value for key, value in state.items()}
    return state, args


def detect_kind(state: dict[str, np.ndarray]) -> str:
    """One of ``teacher``, ``fine_student``, ``coarse_student``, ``selector``, ``pca``, ``itq``."""
    keys = set(state)
    if {"mean", "V", "d"} <= keys:
        return "pca"
    if keys == {"proj"}:
        return "itq"
    if any(k.startswith("mlp.") for k in keys):
        return "selector"
    if any(k.startswith("visil_head.") for k in keys):
        return "fine_student"
    if any(k.startswith("video_comperator.") for k in keys):
        return "teacher"
    if any(k.startswith(("netvlad.", "transformer.", "attention.transform.")) for k in keys):
        return "coarse_student"
    raise CheckpointFormatError(
        "cannot tell which DnS network this state_dict belongs to; keys: "
        + ", ".join(sorted(keys)[:8]) + ("..." if len(keys) > 8 else ""))


# torch layouts -> Keras layouts
def _linear(w):
    return w.T


def _conv(w):
    return np.transpose(w, (2, 3, 1, 0))


def _comparator_pairs(model, prefix):
    comparator = model.comparator
    pairs = []
    for torch_name, conv in zip(("conv1", "conv2", "conv3", "fconv"),
                                (*comparator.convolutions, comparator.final_convolution)):
        pairs += [(conv.kernel, f"{prefix}.{torch_name}.weight", _conv),
                  (conv.bias, f"{prefix}.{torch_name}.bias", None)]
    return pairs


def _attention_pairs(attention, prefix="attention"):
    pairs = [(attention.context_vector.kernel, f"{prefix}.context_vector.weight", _linear)]
    if attention.transform is not None:
        pairs += [(attention.transform.kernel, f"{prefix}.transform.weight", _linear),
                  (attention.transform.bias, f"{prefix}.transform.bias", None)]
    return pairs


def _layer_norm_pairs(norm, prefix):
    return [(norm.gamma, f"{prefix}.weight", None), (norm.beta, f"{prefix}.bias", None)]


def _encoder_layer_pairs(layer, prefix, dims, heads):
    head_dims = dims // heads
    attention = layer.self_attention

    def projection(part, what):
        def take(value):
            chunk = np.split(value, 3, axis=0)[part]
            if what == "weight":
                return chunk.T.reshape(dims, heads, head_dims)
            return chunk.reshape(heads, head_dims)
        return take

    pairs = []
    for part, dense in enumerate((attention.query_dense, attention.key_dense,
                                  attention.value_dense)):
        pairs += [(dense.kernel, f"{prefix}.self_attn.in_proj_weight", projection(part, "weight")),
                  (dense.bias, f"{prefix}.self_attn.in_proj_bias", projection(part, "bias"))]
    output = attention.output_dense
    pairs += [
        (output.kernel, f"{prefix}.self_attn.out_proj.weight",
         lambda w: w.T.reshape(heads, head_dims, dims)),
        (output.bias, f"{prefix}.self_attn.out_proj.bias", None),
        (layer.feedforward_in.kernel, f"{prefix}.linear1.weight", _linear),
        (layer.feedforward_in.bias, f"{prefix}.linear1.bias", None),
        (layer.feedforward_out.kernel, f"{prefix}.linear2.weight", _linear),
        (layer.feedforward_out.bias, f"{prefix}.linear2.bias", None),
        *_layer_norm_pairs(layer.attention_norm, f"{prefix}.norm1"),
        *_layer_norm_pairs(layer.feedforward_norm, f"{prefix}.norm2"),
    ]
    return pairs


def _shape(state, key):
    if key not in state:
        raise CheckpointMismatchError(f"checkpoint lacks '{key}'")
    return state[key].shape


def _build_fine_student(state, args):
    if "binarization.W" in state:
        dims, bits = _shape(state, "binarization.W")
        model = FineGrainedStudent(dims=dims, binarization=True, bits=bits)
        pairs = [(model.binarization.projection, "binarization.W", None)]
    elif "attention.transform.weight" in state:
        model = FineGrainedStudent(dims=_shape(state, "attention.transform.weight")[1],
                                   attention=True)
        pairs = _attention_pairs(model.attention)
    else:
        model = FineGrainedStudent(dims=int(args.get("dims", 512)))
        pairs = []
    return model, pairs + _comparator_pairs(model, "visil_head")


def _build_coarse_student(state, args):
    layer_ids = sorted({int(m.group(1)) for k in state
                        if (m := re.match(r"transformer\.layers\.(\d+)\.", k))})
    transformer = bool(layer_ids)
    if "attention.transform.weight" in state:
        dims = _shape(state, "attention.transform.weight")[1]
    elif transformer:
        dims = _shape(state, "transformer.layers.0.self_attn.in_proj_weight")[1]
    else:
        dims = _shape(state, "netvlad.centroids")[1]
    netvlad = "netvlad.centroids" in state
    heads = int(args.get("transformer_heads", 8))
    config = dict(
        dims=dims, attention="attention.context_vector.weight" in state,
        transformer=transformer, transformer_heads=heads, transformer_layers=len(layer_ids),
        transformer_feedforward_dims=(_shape(state, "transformer.layers.0.linear1.weight")[0]
                                      if transformer else 2048),
        netvlad=netvlad,
        netvlad_clusters=_shape(state, "netvlad.centroids")[0] if netvlad else 64,
        netvlad_outdims=(_shape(state, "netvlad.reduction_layer.weight")[0]
                         if "netvlad.reduction_layer.weight" in state else None))
    if transformer and dims % heads:
        raise CheckpointMismatchError(
            f"transformer width {dims} is not divisible by {heads} heads (args.transformer_heads)")
    model = CoarseGrainedStudent(**config)
    pairs = _attention_pairs(model.attention) if model.attention is not None else []
    for index, layer in zip(layer_ids, model.encoder_layers):
        pairs += _encoder_layer_pairs(layer, f"transformer.layers.{index}", dims, heads)
    if transformer:
        pairs += _layer_norm_pairs(model.encoder_norm, "transformer.norm")
    if netvlad:
        vlad = model.netvlad
        pairs += [(vlad.centroids, "netvlad.centroids", None),
                  (vlad.assignment, "netvlad.conv.weight", lambda w: w[:, :, 0, 0].T),
                  *_layer_norm_pairs(vlad.norm, "netvlad.norm")]
        if vlad.reduction is not None:
            pairs.append((vlad.reduction.kernel, "netvlad.reduction_layer.weight", _linear))
    return model, pairs


def _build_selector(state, args):
    linear_ids = sorted(int(m.group(1)) for k in state
                        if (m := re.match(r"mlp\.model\.(\d+)\.weight$", k))
                        and state[k].ndim == 2)
    batch_norm_ids = sorted(int(m.group(1)) for k in state
                            if (m := re.match(r"mlp\.model\.(\d+)\.running_mean$", k)))
    hidden_size = _shape(state, f"mlp.model.{linear_ids[0]}.weight")[0]
    model = SelectorNetwork(dims=_shape(state, "attention.transform.weight")[1],
                            hidden_size=hidden_size, num_layers=len(batch_norm_ids) - 1)
    pairs = _attention_pairs(model.attention) + _comparator_pairs(model, "visil_head")
    dense_layers = [l for l in model.mlp.layers if l.__class__.__name__ == "Dense"]
    norms = [l for l in model.mlp.layers if l.__class__.__name__ == "BatchNormalization"]
    for dense, index in zip(dense_layers, linear_ids):
        pairs.append((dense.kernel, f"mlp.model.{index}.weight", _linear))
        if dense.use_bias:
            pairs.append((dense.bias, f"mlp.model.{index}.bias", None))
    for norm, index in zip(norms, batch_norm_ids):
        prefix = f"mlp.model.{index}"
        pairs += [(norm.gamma, f"{prefix}.weight", None), (norm.beta, f"{prefix}.bias", None),
                  (norm.moving_mean, f"{prefix}.running_mean", None),
                  (norm.moving_variance, f"{prefix}.running_var", None)]
    return model, pairs


def _build_teacher(state, args):
    attention = "attention.context_vector.weight" in state
    dims = _shape(state, "attention.context_vector.weight")[1] if attention else 3840
    model = ViSiLTeacher(dims=dims, attention=attention)
    pairs = _attention_pairs(model.attention) if attention else []
    return model, pairs + _comparator_pairs(model, "video_comperator")


_BUILDERS: dict[str, Callable] = {
    "fine_student": _build_fine_student,
    "coarse_student": _build_coarse_student,
    "selector": _build_selector,
    "teacher": _build_teacher,
}


def _assign(pairs, state, path):
    used = set()
    for variable, key, transform in pairs:
        if key not in state:
            raise CheckpointMismatchError(f"{path}: missing '{key}' for Keras weight "
                                          f"'{variable.path}' {tuple(variable.shape)}")
        value = np.asarray(state[key], dtype=np.float32)
        value = transform(value) if transform is not None else value
        if tuple(value.shape) != tuple(variable.shape):
            raise CheckpointMismatchError(
                f"{path}: '{key}' {tuple(state[key].shape)} does not fit Keras weight "
                f"'{variable.path}' {tuple(variable.shape)}")
        variable.assign(value)
        used.add(key)
    unused = sorted(k for k in state if k not in used and not k.endswith(_IGNORED_SUFFIXES))
    if unused:
        raise CheckpointMismatchError(f"{path}: unexpected keys {unused}")


def model_from_state_dict(state: dict[str, np.ndarray], args: dict | None = None,
                          kind: str | None = None, source: str = "state_dict"):
    """Builds the Keras model a state_dict describes and fills its weights."""
    kind = kind or detect_kind(state)
    if kind not in _BUILDERS:
        raise CheckpointFormatError(f"{source}: '{kind}' files hold no network")
    model, pairs = _BUILDERS[kind](state, args or {})
    _assign(pairs, state, source)
    return model


def load_official(path: str | os.PathLike):
    """Loads an official DnS/ViSiL checkpoint as a Keras model, without torch.

    Networks (training checkpoints ``{'model', 'args', ...}`` or plain state_dicts such as the
    released ``visil.pth``) come back as :class:`FineGrainedStudent`, :class:`CoarseGrainedStudent`,
    :class:`SelectorNetwork` or :class:`ViSiLTeacher`. ITQ files (``{'proj'}``) come back as the
    projection array ``[D, bits]`` and PCA files (``{'mean', 'V', 'd'}``) as their dict of arrays.
    """
    path = os.fspath(path)
    state, args = split_checkpoint(read_checkpoint(path), path)
    kind = detect_kind(state)
    if kind == "itq":
        return np.asarray(state["proj"], dtype=np.float32)
    if kind == "pca":
        return {key: np.asarray(state[key]) for key in ("mean", "V", "d")}
    return model_from_state_dict(state, args, kind, source=path)


_NETWORKS = (CoarseGrainedStudent, FineGrainedStudent, SelectorNetwork, ViSiLTeacher)


def load_network(path: str | os.PathLike, expected: type | tuple[type, ...] | None = None,
                 what: str = "network"):
    """A Keras network from a ``.keras`` file or an official ``.pth``/``.npz`` checkpoint.

    Args:
        path: the file.
        expected: the network class (or classes) the caller needs; None takes any DnS network.
        what: how error messages name the file, e.g. the flag it came from (``--coarse``).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file holds another network than ``expected`` (or PCA/ITQ arrays).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: {path}: no such file")
    network = load_model(path) if path.endswith(".keras") else load_official(path)
    expected = _NETWORKS if expected is None else expected
    if not isinstance(network, expected):
        found = ("PCA/ITQ arrays" if isinstance(network, (dict, np.ndarray))
                 else type(network).__name__)
        names = " or ".join(cls.__name__ for cls in (
            expected if isinstance(expected, tuple) else (expected,)))
        raise ValueError(f"{what}: {path} holds a {found}, expected a {names}")
    return network
