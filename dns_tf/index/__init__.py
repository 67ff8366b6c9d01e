"""The on-disk video index and coarse retrieval.

``VideoIndex`` (store.py) keeps each video's coarse vector, fine representation, selector score and
metadata crash-safely on disk; its coarse vectors are searched by a ``CoarseSearcher`` (coarse.py):
brute force for small collections, ScaNN for large ones, plus an exact delta of new videos.
"""

from dns_tf.index.coarse import (BruteForceSearcher, CoarseConfig, CoarseSearcher, MergedSearcher,
                                 ScannSearcher, build_searcher)
from dns_tf.index.store import (DuplicateVideoError, IndexCorruptError, IndexLockedError,
                                NotAnIndexError, SearchResult, VideoIndex, VideoIndexError,
                                VideoRecord)

__all__ = [
    "BruteForceSearcher", "CoarseConfig", "CoarseSearcher", "DuplicateVideoError",
    "IndexCorruptError", "IndexLockedError", "MergedSearcher", "NotAnIndexError", "ScannSearcher",
    "SearchResult", "VideoIndex", "VideoIndexError", "VideoRecord", "build_searcher",
]
