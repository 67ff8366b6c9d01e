"""Keras 3 layers of DnS: each a small class with build/call/get_config."""

from dns_tf.layers.attention import Attention
from dns_tf.layers.binarization import Binarization
from dns_tf.layers.comparator import VideoComparator
from dns_tf.layers.netvlad import NetVLAD
from dns_tf.layers.transformer import TransformerEncoderLayer

__all__ = ["Attention", "Binarization", "NetVLAD", "TransformerEncoderLayer", "VideoComparator"]
