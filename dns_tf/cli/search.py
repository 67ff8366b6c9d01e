"""``dns-tf search``: DnS search of a local video index, with the index's own networks in process
or with the networks on a TF Serving server (``--server``).

    dns-tf search --index videos.idx --features features.h5 --query q1 q2 [--mode dns
        --percentage 5 --candidates 1000 --top 20] [--json]
    dns-tf search --server localhost:8500 --index videos.idx --features features.h5 --query q1 q2
    dns-tf search --server localhost:8500 --index videos.idx --video clip.mp4 [--json]
    dns-tf search --server host:8500 --ssl_ca ca.pem [--ssl_cert me.pem --ssl_key me.key] ...

Without ``--server`` the networks recorded in the index (``dns-tf index create``) run here. With
it, coarse retrieval runs here, on the index (ScaNN or exact); indexing the query, the selector and
the fine re-ranking run on the server's ``dns`` model (``dns-tf export``), pinned to one version
for the whole run (over TLS with --ssl_ca, --ssl_cert/--ssl_key). When the server holds the index's
resident fine store (``dns-tf export --index``), re-ranking sends the candidates' row keys;
otherwise their fine representations. An index built with networks other than the served ones is
refused (their fingerprints differ). With ``--video`` the file is decoded here and its frames go to
the server's ``dns_features`` model. Prints one ranking per query (``--json``: one JSON object).
Exit code 0, or 1 when the index, a query or the server fails (the message says which).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os

from dns_tf.cli import fail
from dns_tf.data.feature_files import FeatureFileError, open_features
from dns_tf.features.video import VideoDecodeError, load_video
from dns_tf.flags import add_arguments, field, from_arguments
from dns_tf.index.store import VideoIndex, VideoIndexError
from dns_tf.indexing import FINE_BATCH_SIZE, open_backend
from dns_tf.retrieval import DnSRetriever, Ranking, SearchConfig
from serving.client import RemoteBackend, RemoteFeatureExtractor, ServingClient, ServingRequestError
from serving.config import ClientConfig


@dataclasses.dataclass(frozen=True)
class RemoteModelsConfig:
    """Where the networks are served."""

    server: str | None = field(None, "host:port of the TF Serving gRPC API; none: the index's "
                                     "networks in process")
    model: str = field("dns", "served model with the students and selector")
    features_model: str = field("dns_features", "served feature extractor (for --video)")
    version: int | None = field(None, "model version (default: the newest at start, kept for "
                                      "the whole run)")
    fps: float = field(1.0, "frames per second decoded from --video files")
    store_model: list[str] = field(["dns_store"], "served resident fine stores to look for the "
                                                  "index's in (dns-tf export --index); without "
                                                  "one the targets are sent with each query")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "search", help="search a video index (networks in process, or on a TF Serving server)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="video index directory")
    queries = parser.add_argument_group("queries (one of)")
    queries.add_argument("--features", help="feature file (.h5 or TFRecord directory) holding "
                                            "the --query videos")
    queries.add_argument("--query", nargs="+", default=[], help="query video ids in --features")
    queries.add_argument("--video", nargs="+", default=[],
                         help="query video files (with --server: its dns_features model)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--fine_batch_size", type=int, default=FINE_BATCH_SIZE,
                        help=f"in process: target videos per fine-similarity batch (default: "
                             f"{FINE_BATCH_SIZE})")
    add_arguments(parser, RemoteModelsConfig)
    add_arguments(parser, ClientConfig)
    add_arguments(parser, SearchConfig)
    parser.set_defaults(func=run, parser=parser)


def _queries(args, remote: RemoteModelsConfig, client):
    """Yields ``(name, region features [T, R, D])`` of each query."""
    if args.video:
        extractor = RemoteFeatureExtractor(client, remote.features_model, remote.version)
        size = extractor.frame_size
        for path in args.video:
            yield path, extractor.extract(load_video(path, fps=remote.fps, crop=size))
        return
    with open_features(args.features) as features:
        for video_id in args.query:
            yield video_id, features[video_id]


def run(args) -> int:
    remote = from_arguments(RemoteModelsConfig, args)
    if bool(args.video) == bool(args.features or args.query):
        args.parser.error("give either --features FILE --query ID... or --video PATH...")
    if args.features and not args.query or args.query and not args.features:
        args.parser.error("--features and --query go together")
    if args.video and not remote.server:
        args.parser.error("--video needs --server (its dns_features model extracts the frames' "
                          "features); or extract them with 'dns-tf extract' and use --features")
    try:
        search_config = from_arguments(SearchConfig, args)
    except ValueError as error:
        args.parser.error(str(error))

    results = []
    try:
        with contextlib.ExitStack() as stack:
            index = stack.enter_context(VideoIndex.open(args.index, readonly=True))
            if remote.server:
                client = stack.enter_context(ServingClient(
                    remote.server, **dataclasses.asdict(from_arguments(ClientConfig, args))))
                backend = RemoteBackend(client, remote.model, remote.version,
                                        store_models=remote.store_model)
                where = {"server": remote.server, "model": remote.model,
                         "version": backend.version}
            else:
                client, backend = None, open_backend(index, args.fine_batch_size)
                where = {"server": None}
            retriever = DnSRetriever(index, backend, search_config)
            for name, features in _queries(args, remote, client):
                ranking = retriever.search(features)
                if args.json:
                    results.append({"query": name, **ranking.as_dict()})
                else:
                    print(format_ranking(ranking, name))
    except (ServingRequestError, VideoIndexError, FeatureFileError, VideoDecodeError, OSError,
            KeyError, ValueError) as error:
        return fail("search", error)
    if args.json:
        print(json.dumps({"index": os.path.abspath(args.index), **where,
                          "config": dataclasses.asdict(search_config), "queries": results}))
    return 0


def format_ranking(ranking: Ranking, name: str) -> str:
    """A text table of a ranking's hits under a summary line (fine ``*``: re-ranked by the fine
    student; match: yes/no against the index's match threshold, blank without one)."""
    milliseconds = 1000 * sum(ranking.seconds.values())
    width = max([len("video"), *(len(hit.video_id) for hit in ranking.hits)])
    lines = [f"query {name}: {ranking.num_candidates} candidates, {ranking.num_reranked} "
             f"re-ranked, {milliseconds:.1f} ms",
             f"{'rank':>5}  {'video':<{width}}  {'score':>8}  {'coarse':>8}  fine  match"]
    for rank, hit in enumerate(ranking.hits, start=1):
        match = "" if hit.is_match is None else "yes" if hit.is_match else "no"
        lines.append(f"{rank:>5}  {hit.video_id:<{width}}  {hit.score:8.4f}  "
                     f"{hit.coarse_score:8.4f}  {'*' if hit.reranked else ' ':>4}  "
                     f"{match}".rstrip())
        lines += [f"{'':>5}  query {s.query_start:.1f}-{s.query_end:.1f} s = target "
                  f"{s.target_start:.1f}-{s.target_end:.1f} s  ({s.score:.3f})"
                  for s in hit.segments or ()]
    return "\n".join(lines) + "\n"
