"""Every DnS layer through one harness, as keras-hub's ``run_layer_test``: outputs survive
``get_config``/``from_config`` and a ``.keras`` save/load, masked positions do not leak, and a
mixed-precision dtype policy reaches every sublayer."""

import keras
import numpy as np
import pytest

from dns_tf.layers import Attention, Binarization, NetVLAD, TransformerEncoderLayer, VideoComparator

RNG = np.random.default_rng(0)
VIDEOS = RNG.standard_normal((2, 6, 9, 16)).astype("float32")   # [B, T, R, D]
FRAMES = RNG.standard_normal((2, 7, 16)).astype("float32")      # [B, T, D]
PADDING = np.array([[1] * 7, [1] * 4 + [0] * 3], "float32")     # [B, T]
MATRICES = RNG.uniform(-1, 1, (2, 12, 10)).astype("float32")    # [B, N, M]
PAIRS = np.ones_like(MATRICES)                                   # [B, N, M]
PAIRS[1, 8:], PAIRS[1, :, 6:] = 0, 0

# (layer class, constructor arguments, positional inputs, keyword inputs)
CASES = {
    "attention": (Attention, {}, [VIDEOS], {}),
    "attention_l2": (Attention, {"l2_constrained": True}, [VIDEOS], {}),
    "binarization": (Binarization, {"bits": 32}, [VIDEOS], {}),
    "comparator": (VideoComparator, {}, [MATRICES], {"pair_mask": PAIRS}),
    "comparator_replicate": (VideoComparator, {"padding": "replicate"}, [MATRICES],
                             {"pair_mask": PAIRS}),
    "netvlad": (NetVLAD, {"clusters": 4, "output_dims": 8}, [FRAMES], {"padding_mask": PADDING}),
    "transformer": (TransformerEncoderLayer, {"num_heads": 2, "feedforward_dims": 32,
                                              "dropout": 0.0},
                    [FRAMES], {"padding_mask": PADDING}),
}


def _first(outputs):
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


def _built(name, **extra):
    cls, kwargs, args, call_kwargs = CASES[name]
    keras.utils.set_random_seed(1)
    layer = cls(**kwargs, **extra)
    return layer, np.asarray(_first(layer(*args, **call_kwargs)), "float32")


@pytest.mark.parametrize("name", sorted(CASES))
def test_config_round_trip_keeps_the_outputs(name):
    cls, _, args, call_kwargs = CASES[name]
    layer, expected = _built(name)
    clone = cls.from_config(layer.get_config())
    clone(*args, **call_kwargs)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(_first(clone(*args, **call_kwargs)), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_keras_file_round_trip_keeps_the_outputs(name, tmp_path):
    _, _, args, call_kwargs = CASES[name]
    layer, expected = _built(name)
    inputs = [keras.Input(shape=x.shape[1:]) for x in args]
    mask_inputs = {key: keras.Input(shape=value.shape[1:]) for key, value in call_kwargs.items()}
    model = keras.Model([*inputs, *mask_inputs.values()], _first(layer(*inputs, **mask_inputs)))
    model.save(tmp_path / "layer.keras")
    loaded = keras.models.load_model(tmp_path / "layer.keras")
    got = loaded.predict([*args, *call_kwargs.values()], verbose=0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["netvlad", "transformer"])
def test_padded_frames_do_not_leak_into_real_ones(name):
    cls, kwargs, args, call_kwargs = CASES[name]
    layer, expected = _built(name)
    garbage = args[0].copy()
    garbage[call_kwargs["padding_mask"] == 0] = 1e3
    got = np.asarray(layer(garbage, **call_kwargs))
    real = (slice(None),) if name == "netvlad" else (call_kwargs["padding_mask"] > 0,)
    np.testing.assert_allclose(got[real], expected[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_mixed_precision_policy_reaches_every_sublayer(name):
    _, _, args, call_kwargs = CASES[name]
    _, full = _built(name)
    layer, half = _built(name, dtype="mixed_bfloat16")
    sublayers = _sublayers(layer)
    assert sublayers or name.startswith("binarization")
    assert {sub.dtype_policy.name for sub in [layer, *sublayers]} == {"mixed_bfloat16"}
    assert {variable.dtype for variable in layer.weights} == {"float32"}
    assert keras.backend.standardize_dtype(_first(layer(*args, **call_kwargs)).dtype) == "bfloat16"
    # bfloat16 keeps 8 bits of mantissa: the same numbers to about 1 %.
    scale = np.abs(full).max()
    assert np.abs(half - full).max() <= 0.05 * scale, (np.abs(half - full).max(), scale)


def _sublayers(layer):
    """Every layer held by ``layer`` (attributes, lists of layers), recursively."""
    found, stack = [], [layer]
    while stack:
        current = stack.pop()
        for value in vars(current).values():
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(item, keras.layers.Layer) and item is not layer and item not in found:
                    found.append(item)
                    stack.append(item)
    return found
