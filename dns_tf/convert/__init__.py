"""The bridge to the authors' PyTorch checkpoints: a safe reader and key mappings."""

from dns_tf.convert.official import (CheckpointMismatchError, detect_kind, load_official,
                                     model_from_state_dict, read_checkpoint)
from dns_tf.convert.torch_pickle import (CheckpointFormatError, UnsafeCheckpointError,
                                         load_torch_file)

__all__ = ["CheckpointFormatError", "CheckpointMismatchError", "UnsafeCheckpointError",
           "detect_kind", "load_official", "load_torch_file", "model_from_state_dict",
           "read_checkpoint"]
