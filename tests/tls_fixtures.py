"""Self-signed certificates for TLS tests, made with the ``openssl`` command line tool."""

from __future__ import annotations

import pathlib
import subprocess

from serving.tls import SSLConfig


def self_signed(directory: pathlib.Path, name: str) -> tuple[pathlib.Path, pathlib.Path]:
    """A P-256 key and a one-day certificate for ``localhost`` and 127.0.0.1: ``(cert, key)``."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
                    "-subj", f"/CN={name}", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def ssl_config(server_cert: pathlib.Path, server_key: pathlib.Path,
               client_ca: pathlib.Path | None = None) -> SSLConfig:
    """The ``SSLConfig`` serving with this certificate; verifying clients against ``client_ca``."""
    config = SSLConfig(server_key=server_key.read_text(), server_cert=server_cert.read_text())
    if client_ca is not None:
        config.custom_ca = client_ca.read_text()
        config.client_verify = True
    return config
