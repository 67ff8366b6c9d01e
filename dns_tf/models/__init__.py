"""The DnS networks, each reading like its figure in the paper."""

import keras

from dns_tf.models.selector import SelectorNetwork
from dns_tf.models.students import CoarseGrainedStudent, FineGrainedStudent
from dns_tf.models.teacher import ViSiLTeacher


def load_model(path):
    """Loads a ``.keras`` file written by ``dns-tf convert`` or by training."""
    return keras.saving.load_model(path)


__all__ = ["CoarseGrainedStudent", "FineGrainedStudent", "SelectorNetwork", "ViSiLTeacher",
           "load_model"]
