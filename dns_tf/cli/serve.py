"""``dns-tf serve``: the embedded TF Serving gRPC server, with ``tensorflow_model_server``'s flags.

    dns-tf serve --model_config_file models.config --port 8500
    dns-tf serve --model_name student --model_base_path /models/student
    dns-tf serve --model_config_file models.config --host 0.0.0.0 --ssl_config_file ssl.config

Listens on 127.0.0.1 unless --host says otherwise; over TLS with --ssl_config_file (TF Serving's
SSLConfig text proto, see serving.tls). Runs until SIGTERM or SIGINT, then stops accepting
requests, lets those in flight finish within --shutdown_grace_seconds, and exits 0 by then
(requests still running are abandoned).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from dns_tf.flags import add_arguments, from_arguments
from serving.config import ServeConfig, check_server_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve SavedModels over TF Serving's gRPC API",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, ServeConfig)
    parser.set_defaults(func=run, parser=parser)


def _check_flags(config: ServeConfig, parser: argparse.ArgumentParser) -> None:
    """Usage errors (exit 2) for values out of range, before anything loads."""
    try:
        check_server_settings(config.port, config.max_request_bytes, config.max_input_elements)
    except ValueError as error:
        parser.error(f"--{error}")
    if config.shutdown_grace_seconds < 0:
        parser.error(f"--shutdown_grace_seconds must be >= 0, got {config.shutdown_grace_seconds}")
    if config.grpc_max_threads < 0:
        parser.error(f"--grpc_max_threads must be >= 0, got {config.grpc_max_threads}")


def _models(config: ServeConfig):
    from serving.model_config import single_model_config

    if config.model_config_file and config.model_base_path:
        raise ValueError("give either --model_config_file or --model_base_path, not both")
    if config.model_config_file:
        return config.model_config_file
    if config.model_base_path:
        return single_model_config(config.model_name, config.model_base_path)
    raise ValueError("give --model_config_file or --model_base_path")


def _log_batching(config: ServeConfig, logger: logging.Logger) -> None:
    from google.protobuf import text_format

    from serving.batching import read_batching_parameters

    if config.batching_parameters_file and not config.enable_batching:
        logger.warning("--batching_parameters_file is ignored without --enable_batching")
    elif config.batching_parameters_file:
        parameters = read_batching_parameters(config.batching_parameters_file)
        logger.info("batching parameters: %s",
                    text_format.MessageToString(parameters, as_one_line=True))


def run(args: argparse.Namespace) -> int:
    from serving.server import ModelServer

    config = from_arguments(ServeConfig, args)
    _check_flags(config, args.parser)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger = logging.getLogger("dns_tf.serve")
    stop_requested = threading.Event()
    # Installed before loading: a signal while models load stops the server right after.
    previous_handlers = {signum: signal.signal(signum, lambda received, frame: stop_requested.set())
                         for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            _log_batching(config, logger)
            server = ModelServer(_models(config), port=config.port, host=config.host,
                                 ssl_config=config.ssl_config_file,
                                 max_workers=config.grpc_max_threads or None,
                                 max_request_bytes=config.max_request_bytes,
                                 max_input_elements=config.max_input_elements,
                                 saved_model_tags=[tag.strip() for tag
                                                   in config.saved_model_tags.split(",")],
                                 enable_batching=config.enable_batching,
                                 batching_parameters_file=(config.batching_parameters_file
                                                           if config.enable_batching else None),
                                 xla_cpu_compilation_enabled=config.xla_cpu_compilation_enabled)
            port = server.start()
        except (OSError, ValueError, RuntimeError) as error:
            print(f"dns-tf serve: error: {error}", file=sys.stderr)
            return 1
        print(f"dns-tf serve: gRPC ModelServer listening on {config.host}:{port}"
              f"{' (TLS)' if config.ssl_config_file else ''}", file=sys.stderr, flush=True)
        while not stop_requested.wait(timeout=1.0):
            pass
        logger.info("shutting down: finishing in-flight requests (grace %.1f s)",
                    config.shutdown_grace_seconds)
        server.stop(config.shutdown_grace_seconds)
        running = server.requests_in_flight
        if running:
            # Their clients were answered CANCELLED; a TensorFlow run cannot be interrupted, and
            # the interpreter would join its worker threads at exit, so the grace would not hold.
            logger.warning("stopped; abandoning %d request(s) still running after the grace period",
                           running)
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        logger.info("stopped")
        return 0
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
