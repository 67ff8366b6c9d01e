"""``dns-tf search``: DnS search of a local video index with the networks on a TF Serving server.

    dns-tf search --server localhost:8500 --index videos.idx --features features.h5 --query q1 q2
    dns-tf search --server localhost:8500 --index videos.idx --video clip.mp4 [--json]
    dns-tf search --server host:8500 --ssl_ca ca.pem [--ssl_cert me.pem --ssl_key me.key] ...

Coarse retrieval runs here, on the index (ScaNN or exact); indexing the query, the selector and
the fine re-ranking run on the server's ``dns`` model (``dns-tf export``), pinned to one version
for the whole run (over TLS with --ssl_ca, --ssl_cert/--ssl_key). With ``--video`` the file is decoded here and its frames go to the server's
``dns_features`` model. Prints one ranking per query (``--json``: one JSON object). Exit code 0,
or 1 when the index, a query or the server fails (the message says which).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from dns_tf.config import add_arguments, field, from_arguments
from dns_tf.retrieval import SearchConfig
from serving.config import ClientConfig


@dataclasses.dataclass(frozen=True)
class RemoteModelsConfig:
    """Where the networks are served."""

    server: str | None = field(None, "host:port of the TF Serving gRPC API (required)")
    model: str = field("dns", "served model with the students and selector")
    features_model: str = field("dns_features", "served feature extractor (for --video)")
    version: int | None = field(None, "model version (default: the newest at start, kept for "
                                      "the whole run)")
    fps: float = field(1.0, "frames per second decoded from --video files")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "search", help="search a video index with the networks on a TF Serving server",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="video index directory")
    queries = parser.add_argument_group("queries (one of)")
    queries.add_argument("--features", help="feature file (.h5 or TFRecord directory) holding "
                                            "the --query videos")
    queries.add_argument("--query", nargs="+", default=[], help="query video ids in --features")
    queries.add_argument("--video", nargs="+", default=[], help="query video files")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_arguments(parser, RemoteModelsConfig)
    add_arguments(parser, ClientConfig)
    add_arguments(parser, SearchConfig)
    parser.set_defaults(func=run, parser=parser)


def _queries(args, remote: RemoteModelsConfig, client):
    """Yields ``(name, region features [T, R, D])`` of each query."""
    if args.video:
        from dns_tf.features.video import load_video
        from serving.client import RemoteFeatureExtractor

        extractor = RemoteFeatureExtractor(client, remote.features_model, remote.version)
        size = extractor.frame_size
        for path in args.video:
            yield path, extractor.extract(load_video(path, fps=remote.fps, crop=size))
        return
    from dns_tf.data.feature_files import open_features

    with open_features(args.features) as features:
        for video_id in args.query:
            yield video_id, features[video_id]


def run(args) -> int:
    remote = from_arguments(RemoteModelsConfig, args)
    if not remote.server:
        args.parser.error("the following arguments are required: --server")
    if bool(args.video) == bool(args.features or args.query):
        args.parser.error("give either --features FILE --query ID... or --video PATH...")
    if args.features and not args.query or args.query and not args.features:
        args.parser.error("--features and --query go together")
    try:
        search_config = from_arguments(SearchConfig, args)
    except ValueError as error:
        args.parser.error(str(error))

    from dns_tf.data.feature_files import FeatureFileError
    from dns_tf.features.video import VideoDecodeError
    from dns_tf.index.store import VideoIndex, VideoIndexError
    from dns_tf.retrieval import DnSRetriever
    from serving.client import RemoteBackend, ServingClient, ServingRequestError

    client_config = from_arguments(ClientConfig, args)
    results = []
    try:
        with ServingClient(remote.server, **dataclasses.asdict(client_config)) as client, \
                VideoIndex.open(args.index, readonly=True) as index:
            backend = RemoteBackend(client, remote.model, remote.version)
            retriever = DnSRetriever(index, backend, search_config)
            for name, features in _queries(args, remote, client):
                ranking = retriever.search(features)
                if args.json:
                    results.append({"query": name, **ranking.as_dict()})
                else:
                    print(ranking.format_table(name))
    except (ServingRequestError, VideoIndexError, FeatureFileError, VideoDecodeError, OSError,
            KeyError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"dns-tf search: error: {message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"server": remote.server, "model": remote.model,
                          "version": backend.version, "queries": results}))
    return 0
