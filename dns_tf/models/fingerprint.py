"""A network's identity: a fingerprint of its weights.

Representations made by one network are comparable only with representations made by the same
weights: an index built with a fine student must be searched with that student, wherever it runs
(in process, or behind a model server after any number of re-exports). The fingerprint is what
the index records and what every backend reports, so a mismatch is refused instead of silently
mixing representations. It hashes each weight's dtype, shape and bytes in the model's weight
order; names (which Keras numbers per process) do not enter it.

Example:

    fingerprint(fine_student)   # '3f9c0a1e5b7d2c48'
"""

from __future__ import annotations

import hashlib

import numpy as np

# Hex digits kept: 64 bits, plenty to tell networks apart, short enough for error messages.
FINGERPRINT_LENGTH = 16


def fingerprint(model) -> str:
    """Hex fingerprint of a Keras model's (or layer's) weights."""
    digest = hashlib.sha256()
    for weight in model.weights:
        array = np.ascontiguousarray(np.asarray(weight))
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:FINGERPRINT_LENGTH]
