"""The error a request fails with: a gRPC status code and a message for the client."""

from __future__ import annotations

import grpc
import tensorflow as tf

# TensorFlow's error codes are numbered like gRPC's (both follow google.rpc.Code).
_GRPC_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    """A request that cannot be served; the server answers it with ``code`` and ``message``."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def from_tensorflow(cls, error: tf.errors.OpError) -> "ServingError":
        """The status a TensorFlow runtime error maps to, as TF Serving's ``ToGRPCStatus``."""
        code = _GRPC_CODE_BY_NUMBER.get(error.error_code, grpc.StatusCode.INTERNAL)
        if code == grpc.StatusCode.OK:
            code = grpc.StatusCode.INTERNAL
        return cls(code, error.message)
