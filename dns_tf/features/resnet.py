"""torchvision's ResNet50 in Keras 3 (NHWC), and the mapping of its ``state_dict`` onto it.

The feature extractor of DnS runs torchvision's ``resnet50``: ResNet v1.5, whose bottlenecks put the
stride on the 3x3 convolution (keras.applications' ResNet50 is v1, stride on the first 1x1). To give
the same numbers as PyTorch, padding is explicit (``ZeroPadding2D`` then a ``'valid'``
convolution), which is what torch's symmetric ``padding=`` does; Keras' ``'same'`` pads
asymmetrically for stride 2. torch pads its stem max-pool with -inf; it follows a ReLU, so its
inputs are >= 0 and every 3x3 window holds at least one real value: zero padding gives the same
maximum.

Example:

    backbone = resnet50_torchvision()
    load_torchvision_weights(backbone, state_dict)        # {"conv1.weight": array, ...}
    layer1, layer2, layer3, layer4 = backbone(images)
    # [B, H/4, W/4, 256], [B, H/8, W/8, 512], [B, H/16, W/16, 1024], [B, H/32, W/32, 2048]
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np

# torchvision's BatchNorm2d defaults.
BATCH_NORM_EPSILON = 1e-5
BATCH_NORM_MOMENTUM = 0.9  # torch's momentum=0.1, in Keras' convention

# (blocks, bottleneck width, stride of the first block) of layer1..layer4.
RESNET50_STAGES = ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2))
BOTTLENECK_EXPANSION = 4


def _batch_norm(name):
    return keras.layers.BatchNormalization(
        epsilon=BATCH_NORM_EPSILON, momentum=BATCH_NORM_MOMENTUM, name=name)


@keras.saving.register_keras_serializable(package="dns_tf")
class Bottleneck(keras.layers.Layer):
    """torchvision's ``Bottleneck`` block: 1x1 -> 3x3 (strided) -> 1x1, plus a shortcut.

    ``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x))))))) + shortcut(x))`` where the shortcut
    is the identity, or ``bn(conv1x1_stride(x))`` (torch's ``downsample``) when the stride or the
    number of channels changes.

    Args:
        width: channels of the two inner convolutions; the block outputs ``4 * width``.
        strides: stride of the 3x3 convolution and of the shortcut.

    Call arguments:
        inputs: ``[B, H, W, C]``.

    Returns:
        ``[B, ceil(H / strides), ceil(W / strides), 4 * width]``.

    References:
        He et al., "Deep Residual Learning for Image Recognition", CVPR 2016; torchvision's
        ``resnet.py`` (stride on the 3x3 convolution, "ResNet v1.5").
    """

    def __init__(self, width, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.strides = strides

    def build(self, input_shape):
        channels = input_shape[-1]
        out_channels = BOTTLENECK_EXPANSION * self.width
        self.conv1 = keras.layers.Conv2D(self.width, 1, use_bias=False, name="conv1")
        self.bn1 = _batch_norm("bn1")
        self.pad2 = keras.layers.ZeroPadding2D(1, name="pad2")
        self.conv2 = keras.layers.Conv2D(
            self.width, 3, strides=self.strides, padding="valid", use_bias=False, name="conv2")
        self.bn2 = _batch_norm("bn2")
        self.conv3 = keras.layers.Conv2D(out_channels, 1, use_bias=False, name="conv3")
        self.bn3 = _batch_norm("bn3")
        if self.strides != 1 or channels != out_channels:
            self.downsample_conv = keras.layers.Conv2D(
                out_channels, 1, strides=self.strides, use_bias=False, name="downsample_conv")
            self.downsample_bn = _batch_norm("downsample_bn")
        else:
            self.downsample_conv = self.downsample_bn = None

        batch, height, width = input_shape[:3]
        inner = (batch, height, width, self.width)
        self.conv1.build(input_shape)
        self.bn1.build(inner)
        self.pad2.build(inner)
        padded = self.pad2.compute_output_shape(inner)
        self.conv2.build(padded)
        strided = self.conv2.compute_output_shape(padded)
        self.bn2.build(strided)
        self.conv3.build(strided)
        self.bn3.build(strided[:3] + (out_channels,))
        if self.downsample_conv is not None:
            self.downsample_conv.build(input_shape)
            self.downsample_bn.build(strided[:3] + (out_channels,))

    def call(self, inputs, training=False):
        x = keras.ops.relu(self.bn1(self.conv1(inputs), training=training))
        x = keras.ops.relu(self.bn2(self.conv2(self.pad2(x)), training=training))
        x = self.bn3(self.conv3(x), training=training)
        shortcut = inputs
        if self.downsample_conv is not None:
            shortcut = self.downsample_bn(self.downsample_conv(inputs), training=training)
        return keras.ops.relu(x + shortcut)

    def compute_output_shape(self, input_shape):
        batch, height, width = input_shape[:3]
        def strided(size):
            return None if size is None else -(-size // self.strides)
        return (batch, strided(height), strided(width), BOTTLENECK_EXPANSION * self.width)

    def get_config(self):
        return {**super().get_config(), "width": self.width, "strides": self.strides}


def resnet50_torchvision(name="resnet50_torchvision") -> keras.Model:
    """torchvision's ResNet50 without ``avgpool``/``fc``, returning the four residual stages.

    Layer names follow torchvision's module names with ``.`` replaced by ``_`` (``conv1``, ``bn1``,
    ``layer3_5``, ...), which is what :func:`load_torchvision_weights` relies on.

    Returns:
        A ``keras.Model`` from normalised images ``[B, H, W, 3]`` (float32) to the outputs of
        ``layer1``..``layer4``: ``[B, H/4, W/4, 256]``, ``[B, H/8, W/8, 512]``,
        ``[B, H/16, W/16, 1024]``, ``[B, H/32, W/32, 2048]`` (sizes rounded up).
    """
    images = keras.Input((None, None, 3), name="images")
    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(images)
    x = keras.layers.Conv2D(64, 7, strides=2, padding="valid", use_bias=False, name="conv1")(x)
    x = _batch_norm("bn1")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)
    stages = []
    for stage, (blocks, width, strides) in enumerate(RESNET50_STAGES, start=1):
        for block in range(blocks):
            x = Bottleneck(width, strides=strides if block == 0 else 1,
                           name=f"layer{stage}_{block}")(x)
        stages.append(x)
    return keras.Model(images, stages, name=name)


def _conv_kernel(array):
    """torch ``[out, in, kh, kw]`` -> Keras ``[kh, kw, in, out]``."""
    return np.transpose(array, (2, 3, 1, 0))


def _torchvision_targets(backbone: keras.Model):
    """Yields ``(torch module prefix, kind, Keras layer)`` for every weighted module."""
    yield "conv1", "conv", backbone.get_layer("conv1")
    yield "bn1", "bn", backbone.get_layer("bn1")
    for stage, (blocks, _, _) in enumerate(RESNET50_STAGES, start=1):
        for index in range(blocks):
            block = backbone.get_layer(f"layer{stage}_{index}")
            prefix = f"layer{stage}.{index}"
            for part in (1, 2, 3):
                yield f"{prefix}.conv{part}", "conv", getattr(block, f"conv{part}")
                yield f"{prefix}.bn{part}", "bn", getattr(block, f"bn{part}")
            if block.downsample_conv is not None:
                yield f"{prefix}.downsample.0", "conv", block.downsample_conv
                yield f"{prefix}.downsample.1", "bn", block.downsample_bn


# torch parameter/buffer suffix -> position in the Keras layer's weights.
_WEIGHT_ORDER = {
    "conv": ("weight",),
    "bn": ("weight", "bias", "running_mean", "running_var"),
}
# Keys a torchvision resnet50 state_dict holds that the extractor does not use.
_UNUSED_SUFFIXES = (".num_batches_tracked",)
_UNUSED_KEYS = ("fc.weight", "fc.bias")


def load_torchvision_weights(backbone: keras.Model, state_dict: Mapping[str, np.ndarray]) -> None:
    """Copies a torchvision ``resnet50`` ``state_dict`` (numpy arrays) into ``backbone``.

    Args:
        backbone: a model from :func:`resnet50_torchvision`.
        state_dict: torchvision keys (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...) to
            arrays. A ``module.`` prefix (``DataParallel``) is accepted.

    Raises:
        ValueError: naming the key, when a key is missing, unexpected, or of the wrong shape.
    """
    state_dict = {(key[len("module."):] if key.startswith("module.") else key): value
                  for key, value in state_dict.items()}
    used = set()
    missing = []
    assignments = []
    for prefix, kind, layer in _torchvision_targets(backbone):
        arrays = []
        for suffix in _WEIGHT_ORDER[kind]:
            key = f"{prefix}.{suffix}"
            if key not in state_dict:
                missing.append(key)
                continue
            used.add(key)
            array = np.asarray(state_dict[key], dtype=np.float32)
            arrays.append((key, _conv_kernel(array) if kind == "conv" else array))
        if len(arrays) == len(_WEIGHT_ORDER[kind]):
            assignments.append((layer, arrays))
    if missing:
        raise ValueError(
            f"not a torchvision resnet50 state_dict: {len(missing)} keys missing, e.g. "
            f"{missing[:5]}")
    unexpected = sorted(key for key in state_dict if key not in used and key not in _UNUSED_KEYS
                        and not key.endswith(_UNUSED_SUFFIXES))
    if unexpected:
        raise ValueError(
            f"not a torchvision resnet50 state_dict: unexpected keys, e.g. {unexpected[:5]}")
    for layer, arrays in assignments:
        for (key, array), variable in zip(arrays, layer.weights):
            if tuple(variable.shape) != array.shape:
                raise ValueError(
                    f"{key}: expected shape {_torch_shape(tuple(variable.shape), array.ndim)} "
                    f"(torch layout) for Keras layer {layer.name!r}, got "
                    f"{tuple(np.asarray(state_dict[key]).shape)}")
        layer.set_weights([array for _, array in arrays])


def _torch_shape(keras_shape, ndim):
    """The torch shape matching a Keras weight shape, for error messages."""
    if ndim == 4:
        height, width, inputs, outputs = keras_shape
        return (outputs, inputs, height, width)
    return keras_shape
