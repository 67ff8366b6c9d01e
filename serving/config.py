"""The server's settings: one frozen dataclass, the single home of every ``dns-tf serve`` default.

Kept free of TensorFlow and gRPC imports so that building the CLI parser stays instant.
"""

from __future__ import annotations

import dataclasses

from dns_tf.flags import field

MAX_PORT = 65535


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """``dns-tf serve``: the flags of ``tensorflow_model_server`` it shares keep their names."""

    model_config_file: str | None = field(None, "models.config text proto (ModelServerConfig)")
    model_name: str = field("default", "model name when serving one model with --model_base_path")
    model_base_path: str | None = field(None, "directory of numbered SavedModel versions of one model")
    port: int = field(8500, "gRPC port, 0-65535 (0 picks a free one and prints it)")
    host: str = field("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    ssl_config_file: str | None = field(None, "SSLConfig text proto (server_key, server_cert, "
                                              "custom_ca, client_verify): serve over TLS")
    grpc_max_threads: int = field(0, "threads answering requests (0: 4 per CPU, as TF Serving)")
    max_request_bytes: int = field(1 << 30, "largest request accepted, and most bytes one input may "
                                             "decode to; beyond it: RESOURCE_EXHAUSTED")
    max_input_elements: int = field(1 << 25, "most elements one request input may declare (its "
                                             "shape's product); beyond it: RESOURCE_EXHAUSTED")
    saved_model_tags: str = field("serve", "comma-separated MetaGraph tags to load")
    shutdown_grace_seconds: float = field(10.0, "on SIGTERM/SIGINT, how long in-flight requests may finish")
    enable_batching: bool = field(False, "merge concurrent requests of one signature into one run, "
                                         "as TF Serving", explicit_value=True)
    batching_parameters_file: str | None = field(None, "BatchingParameters text proto for "
                                                       "--enable_batching (default: TF Serving's "
                                                       "scheduler defaults)")
    xla_cpu_compilation_enabled: bool = field(False, "compile XLA functions (jit_compile, e.g. the "
                                                     "binarization student's popcount kernel) on "
                                                     "CPU, as tensorflow_model_server's flag",
                                              explicit_value=True)


def check_server_settings(port: int, max_request_bytes: int, max_input_elements: int) -> None:
    """Raises ValueError naming the first setting out of range."""
    if not 0 <= port <= MAX_PORT:
        raise ValueError(f"port must be in 0-{MAX_PORT}, got {port}")
    if max_request_bytes <= 0:
        raise ValueError(f"max_request_bytes must be positive, got {max_request_bytes}")
    if max_input_elements <= 0:
        raise ValueError(f"max_input_elements must be positive, got {max_input_elements}")


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """How ``serving.client`` talks to a server: the defaults of its clients and of ``dns-tf search``."""

    timeout: float = field(30.0, "seconds each request attempt may take (its gRPC deadline)")
    retries: int = field(3, "times a request failing with UNAVAILABLE is resent")
    backoff: float = field(0.1, "seconds before the first retry, doubling for each next one")
    max_backoff: float = field(5.0, "longest wait between retries, in seconds")
    ssl_ca: str | None = field(None, "PEM file of the CA that signed the server's certificate: "
                                     "connect over TLS (system roots when only --ssl_cert is given)")
    ssl_cert: str | None = field(None, "PEM client certificate, for servers that verify clients "
                                       "(with --ssl_key)")
    ssl_key: str | None = field(None, "PEM private key of --ssl_cert")
