"""TLS for the gRPC API: TF Serving's ``--ssl_config_file`` on the server, PEM files on the client.

The server reads the ``SSLConfig`` text proto of ``tensorflow_model_server``
(``tensorflow_serving/config/ssl_config.proto``); as there, its fields hold PEM *contents*, not paths:

    server_key: "-----BEGIN PRIVATE KEY-----\\n...\\n-----END PRIVATE KEY-----"
    server_cert: "-----BEGIN CERTIFICATE-----\\n...\\n-----END CERTIFICATE-----"
    custom_ca: "-----BEGIN CERTIFICATE-----\\n..."    # CA that client certificates must chain to
    client_verify: true                              # refuse clients without such a certificate

Clients (``ServingClient``, ``dns-tf search``) take PEM file paths: ``ssl_ca`` (the CA that signed
the server's certificate; the system's roots when omitted), and ``ssl_cert`` with ``ssl_key`` for
servers that verify clients.
"""

from __future__ import annotations

import os
import pathlib

import grpc
from google.protobuf.message import Message

from serving.declared_protos import declare_message
from serving.model_config import read_text_proto

SSLConfig = declare_message("SSLConfig", (
    ("server_key", 1, "string", False),
    ("server_cert", 2, "string", False),
    ("custom_ca", 3, "string", False),
    ("client_verify", 4, "bool", False),
))
_PEM_BEGIN = "-----BEGIN "


def read_ssl_config(path: str | os.PathLike) -> Message:
    """Parses and checks an ``SSLConfig`` text proto (see the module docstring).

    Raises:
        FileNotFoundError: ``path`` cannot be read.
        ValueError: not an ``SSLConfig``, a missing key or certificate, a field that is not PEM,
            or ``client_verify`` without ``custom_ca``.
    """
    config = read_text_proto(path, SSLConfig(), "SSL config file")
    for name in ("server_key", "server_cert", "custom_ca"):
        value = getattr(config, name)
        if name != "custom_ca" and not value:
            raise ValueError(f"{path}: SSLConfig needs {name} (PEM contents, not a path)")
        if value and _PEM_BEGIN not in value:
            raise ValueError(f"{path}: SSLConfig {name} must hold PEM contents "
                             f"('-----BEGIN ...'), got {value[:40]!r}")
    if config.client_verify and not config.custom_ca:
        raise ValueError(f"{path}: SSLConfig client_verify needs custom_ca, the CA client "
                         f"certificates must chain to")
    return config


def server_credentials(config: Message) -> grpc.ServerCredentials:
    """gRPC server credentials of a checked ``SSLConfig``."""
    return grpc.ssl_server_credentials(
        [(config.server_key.encode(), config.server_cert.encode())],
        root_certificates=config.custom_ca.encode() or None,
        require_client_auth=config.client_verify)


def _read_pem(path: str | os.PathLike, flag: str) -> bytes:
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as error:
        raise FileNotFoundError(f"cannot read {flag} file {path}: {error}") from error
    if _PEM_BEGIN.encode() not in data:
        raise ValueError(f"{flag} file {path} is not PEM ('-----BEGIN ...' expected)")
    return data


def channel_credentials(ssl_ca: str | os.PathLike | None = None,
                        ssl_cert: str | os.PathLike | None = None,
                        ssl_key: str | os.PathLike | None = None) -> grpc.ChannelCredentials:
    """gRPC channel credentials from PEM files: the server's CA, and a client certificate and key.

    Raises:
        ValueError: only one of ``ssl_cert`` and ``ssl_key``, or a file that is not PEM.
        FileNotFoundError: a file that cannot be read.
    """
    if (ssl_cert is None) != (ssl_key is None):
        raise ValueError("ssl_cert and ssl_key go together (the client certificate and its key)")
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(ssl_ca, "ssl_ca") if ssl_ca else None,
        private_key=_read_pem(ssl_key, "ssl_key") if ssl_key else None,
        certificate_chain=_read_pem(ssl_cert, "ssl_cert") if ssl_cert else None)
