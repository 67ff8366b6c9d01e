"""The benchmarks' evaluation protocols (FIVR-5K/200K, CC_WEB_VIDEO, EVVE, SVD) and the DnS sweep.

Example:

    dataset = load_dataset("FIVR-5K", "annotations/fivr.pickle")
    metrics = dataset.evaluate(similarities)  # {'DSVR': ..., 'CSVR': ..., 'ISVR': ...}
"""

from dns_tf.evaluation.annotations import (AnnotationFormatError, UnsafeAnnotationError,
                                           load_annotation_pickle, read_svd_ground_truth)
from dns_tf.evaluation.datasets import (DATASET_NAMES, EVVE, FIVR, SVD, CCWebVideo,
                                        RetrievalDataset, canonical_dataset_name, load_dataset)
from dns_tf.evaluation.similarities import SimilarityMatrix
from dns_tf.evaluation.sweep import (Cost, SweepRow, dns_similarities, dns_sweep, format_table,
                                     plot_sweep)

__all__ = [
    "AnnotationFormatError", "UnsafeAnnotationError", "load_annotation_pickle",
    "read_svd_ground_truth", "DATASET_NAMES", "EVVE", "FIVR", "SVD", "CCWebVideo",
    "RetrievalDataset", "canonical_dataset_name", "load_dataset", "SimilarityMatrix", "Cost",
    "SweepRow", "dns_similarities", "dns_sweep", "format_table", "plot_sweep",
]
