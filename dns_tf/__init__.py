"""dns-tf: Distill-and-Select (Kordopatis-Zilos et al., IJCV 2022) in Keras 3.

The package is organised by idea: ``layers`` and ``models`` hold the networks, ``convert`` reads the
authors' checkpoints, ``features`` turns video files into region features, ``data`` feeds training,
``index`` and ``retrieval`` search collections, ``evaluation`` reproduces the benchmarks' protocols.
"""

__version__ = "0.1.0"
