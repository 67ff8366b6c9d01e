"""Video files to region features: decoding (``video``), the ResNet50 L3-iMAC extractor
(``extractor``, ``resnet``) and PCA whitening (``whitening``).

The Keras classes load lazily so that decoding alone does not import TensorFlow.
"""

import importlib

_LAZY = {
    "FeatureExtractor": "dns_tf.features.extractor",
    "L3iMAC": "dns_tf.features.extractor",
    "PCAComponents": "dns_tf.features.whitening",
    "PCAWhitening": "dns_tf.features.whitening",
    "fit_whitening": "dns_tf.features.whitening",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
