"""The bridge to the authors' PyTorch checkpoints: a safe reader and key mappings.

Names are imported on first use, so that ``dns-tf`` builds its command line without TensorFlow.
"""

import importlib

_EXPORTS = {
    "CheckpointMismatchError": "dns_tf.convert.official",
    "detect_kind": "dns_tf.convert.official",
    "load_network": "dns_tf.convert.official",
    "load_official": "dns_tf.convert.official",
    "model_from_state_dict": "dns_tf.convert.official",
    "read_checkpoint": "dns_tf.convert.official",
    "CheckpointFormatError": "dns_tf.convert.torch_pickle",
    "UnsafeCheckpointError": "dns_tf.convert.torch_pickle",
    "load_torch_file": "dns_tf.convert.torch_pickle",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dns_tf.convert' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
