"""``dns-tf serve``: the embedded TF Serving gRPC server, with ``tensorflow_model_server``'s flags.

    dns-tf serve --model_config_file models.config --port 8500
    dns-tf serve --model_name student --model_base_path /models/student

Runs until SIGTERM or SIGINT, then stops accepting requests, lets those in flight finish within
``--shutdown_grace_seconds`` and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from dns_tf.config import add_arguments, from_arguments
from serving.config import ServeConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve SavedModels over TF Serving's gRPC API",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, ServeConfig)
    parser.set_defaults(func=run)


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
        logger.info("batching parameters: %s", text_format.MessageToString(parameters, as_one_line=True))


def run(args: argparse.Namespace) -> int:
    from serving.server import ModelServer

    config = from_arguments(ServeConfig, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger = logging.getLogger("dns_tf.serve")
    stop_requested = threading.Event()
    # Installed before loading: a signal while models load stops the server right after.
    previous_handlers = {signum: signal.signal(signum, lambda received, frame: stop_requested.set())
                         for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            _log_batching(config, logger)
            server = ModelServer(_models(config), port=config.port, host=config.host,
                                 max_workers=config.grpc_max_threads or None,
                                 max_request_bytes=config.max_request_bytes,
                                 saved_model_tags=[tag.strip() for tag in config.saved_model_tags.split(",")],
                                 enable_batching=config.enable_batching,
                                 batching_parameters_file=(config.batching_parameters_file
                                                           if config.enable_batching else None),
                                 xla_cpu_compilation_enabled=config.xla_cpu_compilation_enabled)
            port = server.start()
        except (OSError, ValueError, RuntimeError) as error:
            print(f"dns-tf serve: error: {error}", file=sys.stderr)
            return 1
        print(f"dns-tf serve: gRPC ModelServer listening on {config.host}:{port}", file=sys.stderr,
              flush=True)
        while not stop_requested.wait(timeout=1.0):
            pass
        logger.info("shutting down: finishing in-flight requests (grace %.1f s)",
                    config.shutdown_grace_seconds)
        server.stop(config.shutdown_grace_seconds)
        logger.info("stopped")
        return 0
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
