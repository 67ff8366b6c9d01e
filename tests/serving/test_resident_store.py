"""Re-ranking by row key against a resident fine store, and model identity across exports: the
served scores are LocalBackend's, a store serves only its own index and student, videos added
since the store was exported are shipped, and a re-exported model with other weights is refused
by an index built with the old one."""

from __future__ import annotations

import json

import grpc
import keras
import numpy as np
import pytest

from dns_tf.cli import main as cli_main
from dns_tf.data.feature_files import open_writer
from dns_tf.index.store import VideoIndex
from dns_tf.models import CoarseGrainedStudent, FineGrainedStudent, SelectorNetwork
from dns_tf.retrieval import DnSRetriever, LocalBackend, index_metadata
from serving.client import RemoteBackend, ServingRequestError
from serving.export import export_models
from serving.model_config import available_versions, models_config, read_model_server_config
from serving.resident_store import STORE_MODEL, export_store
from serving.server import ModelServer

pytestmark = pytest.mark.slow  # exports and servers (~1 min to set up)
LENGTHS = [3, 9, 4, 17, 12, 6, 25, 8, 5, 14]


def networks(kind: str, seed: int):
    keras.utils.set_random_seed(seed)
    return (CoarseGrainedStudent(), FineGrainedStudent(binarization=kind == "binarization",
                                                       attention=kind == "attention"),
            SelectorNetwork())


def create_index(path, local):
    return VideoIndex.create(str(path), coarse_dims=local.coarse_student.output_dims,
                             fine_kind=local.fine_kind, fine_shape_tail=local.fine_shape_tail,
                             metadata=index_metadata(local))


def add_videos(index, local, names, rng):
    for name in names:
        length = int(rng.choice(LENGTHS))
        indexed = local.index(rng.standard_normal((1, length, 9, 512)).astype(np.float32),
                              np.ones((1, length), np.float32))
        index.add(name, indexed.coarse[0], indexed.fine[0], indexed.selector[0])


@pytest.fixture(scope="module", params=["binarization", "attention"])
def setup(request, tmp_path_factory):
    """An index of 10 videos with its store served next to ``dns``, then 2 videos more."""
    root = tmp_path_factory.mktemp(request.param)
    models = networks(request.param, seed=1)
    local = LocalBackend(*models, batch_size=4)
    rng = np.random.default_rng(0)
    index = create_index(root / "videos.idx", local)
    add_videos(index, local, [f"v{n}" for n in range(10)], rng)
    exported = export_models(root / "export", *models)
    export_store(root / "export", index, models[1])
    add_videos(index, local, ["late0", "late1"], rng)  # not in the store's generation
    query = local.index(rng.standard_normal((1, 11, 9, 512)).astype(np.float32),
                        np.ones((1, 11), np.float32)).fine[0]
    with ModelServer(exported.models_config, xla_cpu_compilation_enabled=True) as server:
        yield {"root": root, "index": index, "local": local, "models": models, "query": query,
               "target": f"127.0.0.1:{server.port}"}
    index.close()


def test_reranking_by_key_gives_the_in_process_scores(setup):
    index, query = setup["index"], setup["query"]
    remote = RemoteBackend(setup["target"], targets_per_request=4)
    ids = index.ids()[::-1]
    expected = DnSRetriever(index, setup["local"]).fine_scores(query, ids)
    got = DnSRetriever(index, remote).fine_scores(query, ids)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    store = remote.store_for(index)
    assert store is not None and store.model.model_name == STORE_MODEL
    # The two videos added after the export are not resident: their targets were shipped.
    _, resident = store.scores(remote._stored(query, "query"), index.keys(ids))
    assert [video for video, held in zip(ids, resident) if not held] == ["late1", "late0"]
    # Shipping every target (fine_similarity, the batched graph) gives the same numbers.
    shipped = remote.fine_similarity(query, [record.fine for record in index.get_many(ids)])
    np.testing.assert_allclose(shipped, expected, atol=1e-6)
    remote.close()


def test_a_store_of_another_index_is_not_used(setup, tmp_path):
    local = setup["local"]
    with create_index(tmp_path / "other.idx", local) as other:
        add_videos(other, local, ["a", "b", "c"], np.random.default_rng(5))
        remote = RemoteBackend(setup["target"])
        got = DnSRetriever(other, remote).fine_scores(setup["query"], other.ids())
        assert remote.store_for(other) is None  # the served store holds another index
        np.testing.assert_allclose(
            got, DnSRetriever(other, local).fine_scores(setup["query"], other.ids()), atol=1e-6)
        remote.close()


def test_a_new_index_generation_is_a_new_store_version(setup):
    root = setup["root"] / "export"
    export_store(root, setup["index"], setup["models"][1])
    assert available_versions(root / STORE_MODEL) == [1, 2]
    config = read_model_server_config(root / "models.config")
    assert sorted(model.name for model in config.model_config_list.config) == ["dns", STORE_MODEL]
    with pytest.raises(ValueError, match="was built with fine student"):
        export_store(root, setup["index"], networks("binarization", seed=9)[1])


def test_a_reexported_model_with_other_weights_is_refused(setup):
    kind = "binarization" if setup["local"].fine_kind == "bits" else "attention"
    root = setup["root"] / "export"
    retrained = networks(kind, seed=2)
    export_models(root, *retrained, version=7)
    recorded = setup["index"].metadata["fingerprints"]
    config = models_config({"dns": root / "dns"})
    config.model_config_list.config[0].model_version_policy.all.SetInParent()  # 1 and 7
    with ModelServer(config, xla_cpu_compilation_enabled=True) as server:
        remote = RemoteBackend(f"127.0.0.1:{server.port}")
        assert remote.version == 7
        with pytest.raises(ValueError, match="built with other networks") as error:
            DnSRetriever(setup["index"], remote)
        for network in ("coarse", "fine", "selector"):
            assert recorded[network] in str(error.value)
            assert remote.fingerprints[network] in str(error.value)
        # The same index searches with the version it was built with.
        pinned = RemoteBackend(f"127.0.0.1:{server.port}", version=1)
        DnSRetriever(setup["index"], pinned)
        assert pinned.fingerprints == setup["local"].fingerprints
        remote.close()
        pinned.close()


def test_xla_signatures_need_the_cpu_flag(setup):
    """Without --xla_cpu_compilation_enabled a CPU server refuses the binarization student's
    popcount graph, as tensorflow_model_server does; the float graph needs no XLA."""
    query, local = setup["query"], setup["local"]
    config = models_config({"dns": setup["root"] / "export" / "dns"})
    config.model_config_list.config[0].model_version_policy.specific.versions.append(1)
    with ModelServer(config) as server:
        remote = RemoteBackend(f"127.0.0.1:{server.port}", version=1)
        if local.fine_kind == "bits":
            with pytest.raises(ServingRequestError, match="--xla_cpu_compilation_enabled") as error:
                remote.fine_similarity(query, [query])
            assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION
        else:
            np.testing.assert_allclose(remote.fine_similarity(query, [query]),
                                       local.fine_similarity(query, [query]), atol=1e-6)
        remote.close()


def test_export_index_and_search_through_the_store_from_the_command_line(tmp_path, capsys):
    """``dns-tf export --index`` then ``dns-tf search``: the ranking of ``dns-tf search`` in process,
    with the targets' representations read on the server only (the client's copy of them is
    destroyed, and the search still answers)."""
    paths = {}
    for name, network in zip(("coarse", "fine", "selector"), networks("binarization", seed=4)):
        paths[name] = tmp_path / f"{name}.keras"
        network.save(paths[name])
    rng = np.random.default_rng(2)
    with open_writer(tmp_path / "features.h5") as writer:
        for number, length in enumerate(LENGTHS):
            writer.write(f"v{number}", rng.standard_normal((length, 9, 512)).astype(np.float32))
    index, out = tmp_path / "videos.idx", tmp_path / "export"
    assert cli_main(["index", "create", str(index), *(f"--{n}={p}" for n, p in paths.items())]) == 0
    assert cli_main(["index", "add", str(index), "--features", str(tmp_path / "features.h5")]) == 0
    assert cli_main(["export", "--index", str(index), "--out", str(out)]) == 0
    assert cli_main(["export", *(f"--{n}={p}" for n, p in paths.items()), "--out", str(out)]) == 0
    assert "dns_store: version 1" in capsys.readouterr().out
    query = ["--features", str(tmp_path / "features.h5"), "--query", "v3", "--mode", "fine",
             "--json"]
    assert cli_main(["search", "--index", str(index), *query]) == 0
    expected = json.loads(capsys.readouterr().out)["queries"][0]["hits"]
    (index / "fine.bin").write_bytes(b"\0" * (index / "fine.bin").stat().st_size)
    with ModelServer(out / "models.config", xla_cpu_compilation_enabled=True) as server:
        assert cli_main(["search", "--server", f"127.0.0.1:{server.port}", "--index", str(index),
                         *query]) == 0
    got = json.loads(capsys.readouterr().out)["queries"][0]["hits"]
    assert [hit["video_id"] for hit in got] == [hit["video_id"] for hit in expected]
    np.testing.assert_allclose([hit["score"] for hit in got], [hit["score"] for hit in expected],
                               atol=1e-6)
