"""``dns-tf download``: the authors' checkpoints fetched and checked, from a local mirror (file://
and an HTTP server on 127.0.0.1) and with no network (a host that never resolves)."""

from __future__ import annotations

import functools
import http.server
import pathlib
import shutil
import threading

import pytest

from dns_tf.cli import main as cli_main
from dns_tf.convert.download import CHECKPOINTS, DownloadError, checkpoint_kind, download

NOWHERE = "http://checkpoints.invalid/"  # .invalid never resolves (RFC 2606)


@pytest.fixture(scope="module")
def mirror(checkpoints, tmp_path_factory) -> pathlib.Path:
    """The authors' file names holding copies of the reference checkpoints; one of the wrong kind."""
    directory = tmp_path_factory.mktemp("mirror")
    shutil.copy(checkpoints / "cg_student.pth", directory / "dns_cg_student.pth")
    shutil.copy(checkpoints / "selector.pth", directory / "dns_selector_cg-fg_bin.pth")
    shutil.copy(checkpoints / "itq_resnet50W.pth", directory / "itq_resnet50W_dns100k_1M.pth")
    shutil.copy(checkpoints / "cg_student.pth", directory / "dns_selector_cg-fg_att.pth")  # wrong kind
    return directory


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the mirror; ``/cut/NAME`` announces NAME's size but sends only half of it."""

    def do_GET(self):
        if not self.path.startswith("/cut/"):
            return super().do_GET()
        data = (pathlib.Path(self.directory) / self.path[len("/cut/"):]).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:len(data) // 2])
        self.close_connection = True

    def log_message(self, *args):
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client hanging up mid-file (the size cap) is expected here


@pytest.fixture(scope="module")
def http_mirror(mirror):
    server = _QuietServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(mirror)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_every_published_checkpoint_has_a_url_and_a_kind():
    assert CHECKPOINTS["dns_fg_bin_student"].url == \
        "https://mever.iti.gr/distill-and-select/models/dns_fg_bin_student.pth"
    assert CHECKPOINTS["pca_resnet50_vcdb_1M"].url == "http://ndd.iti.gr/visil/pca_resnet50_vcdb_1M.pth"
    assert {checkpoint.kind for checkpoint in CHECKPOINTS.values()} == {
        "coarse_student", "fine_student", "selector", "itq", "teacher", "pca", "resnet50"}


def test_the_reference_checkpoints_load_as_their_kinds(checkpoints):
    assert checkpoint_kind(checkpoints / "cg_student.pth") == "coarse_student"
    assert checkpoint_kind(checkpoints / "fg_bin_student.pth") == "fine_student"
    assert checkpoint_kind(checkpoints / "visil_teacher.pth") == "teacher"
    assert checkpoint_kind(checkpoints / "resnet50_torchvision.npz") == "resnet50"
    assert checkpoint_kind(checkpoints / "pca_resnet50.npz") == "pca"


def test_http_download_is_checked_and_kept(http_mirror, mirror, tmp_path):
    lines = []
    paths = download(["dns_cg_student", "dns_selector_cg-fg_bin"], tmp_path, mirror=http_mirror,
                     report=lines.append)
    assert [path.name for path in paths] == ["dns_cg_student.pth", "dns_selector_cg-fg_bin.pth"]
    assert paths[0].read_bytes() == (mirror / "dns_cg_student.pth").read_bytes()
    assert "loads as coarse_student" in lines[0] and "loads as selector" in lines[1]
    download(["dns_cg_student"], tmp_path, mirror=NOWHERE, report=lines.append)  # no fetch needed
    assert "already there" in lines[-1]


def test_wrong_kind_and_cut_transfers_are_refused_and_leave_nothing(http_mirror, tmp_path):
    with pytest.raises(DownloadError, match="dns_selector_cg-fg_att: .* loads as coarse_student, "
                                            "expected selector"):
        download(["dns_selector_cg-fg_att"], tmp_path, mirror=http_mirror)
    with pytest.raises(DownloadError, match=r"received \d+ of the \d+ bytes announced|"
                                            r"cannot download dns_cg_student"):
        download(["dns_cg_student"], tmp_path, mirror=http_mirror + "/cut")
    with pytest.raises(DownloadError, match="more than the 1000-byte cap"):
        download(["dns_cg_student"], tmp_path, mirror=http_mirror, max_bytes=1000)
    assert list(tmp_path.iterdir()) == []


def test_no_network_is_one_clear_error(tmp_path):
    with pytest.raises(DownloadError, match=r"cannot download visil from "
                                            r"http://checkpoints.invalid/visil.pth: .* \(no network\?"):
        download(["visil"], tmp_path, mirror=NOWHERE, timeout=10)
    assert list(tmp_path.iterdir()) == []


def test_download_command(mirror, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["download", "dns_cg_student", "itq_resnet50W_dns100k_1M", "--out", str(out),
                     "--mirror", mirror.as_uri()]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["dns_cg_student.pth",
                                                           "itq_resnet50W_dns100k_1M.pth"]
    assert "loads as itq" in capsys.readouterr().out
    assert cli_main(["download", "visil", "--out", str(out), "--mirror", NOWHERE, "--timeout", "10"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dns-tf download: error: cannot download visil") and err.count("\n") == 1
    with pytest.raises(SystemExit) as exited:
        cli_main(["download", "nope", "--out", str(out)])
    assert exited.value.code == 2
    assert "unknown checkpoint nope" in capsys.readouterr().err
    assert cli_main(["download", "--list"]) == 0
    assert "https://mever.iti.gr/distill-and-select/models/dns_cg_student.pth" in capsys.readouterr().out
