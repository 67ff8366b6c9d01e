"""The authors' published checkpoints: where they are, and fetching them checked.

The DnS authors' code (github.com/mever-team/distill-and-select) and ViSiL's
(github.com/MKLab-ITI/visil) download their weights from the authors' model servers; ResNet50 comes
from PyTorch's. No checksums are published, so a download is checked by what can be checked: the
byte count the server announced, a size cap, and that the restricted reader
(:mod:`dns_tf.convert.torch_pickle`) loads it as the network it should be. A file passes before it
takes its final name (``<name>.part`` until then), so an interrupted run never leaves a half file
that looks finished.

Example:

    paths = download(["dns_cg_student", "dns_fg_bin_student"], "checkpoints/")
"""

from __future__ import annotations

import dataclasses
import http.client
import os
import pathlib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable

from dns_tf.convert.official import detect_kind, read_checkpoint, split_checkpoint
from dns_tf.convert.torch_pickle import CheckpointFormatError

DNS_MODELS = "https://mever.iti.gr/distill-and-select/models/"
VISIL_MODELS = "http://ndd.iti.gr/visil/"
MAX_CHECKPOINT_BYTES = 512 << 20  # the largest, ResNet50, is about 100 MB
_CHUNK_BYTES = 1 << 20
RESNET_KIND = "resnet50"


@dataclasses.dataclass(frozen=True)
class PublishedCheckpoint:
    """One file the authors publish.

    Attributes:
        name: what ``dns-tf download`` calls it (the file name without ``.pth``).
        url: where the authors' code downloads it from.
        kind: what it must load as: a :func:`detect_kind` kind, or ``resnet50``.
        use: what it is for.
    """

    name: str
    url: str
    kind: str
    use: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]


CHECKPOINTS = {checkpoint.name: checkpoint for checkpoint in (
    PublishedCheckpoint("dns_cg_student", DNS_MODELS + "dns_cg_student.pth", "coarse_student",
                        "coarse-grained student (CG)"),
    PublishedCheckpoint("dns_fg_att_student", DNS_MODELS + "dns_fg_att_student.pth", "fine_student",
                        "fine-grained student, attention (FG-Att)"),
    PublishedCheckpoint("dns_fg_bin_student", DNS_MODELS + "dns_fg_bin_student.pth", "fine_student",
                        "fine-grained student, binarization (FG-Bin)"),
    PublishedCheckpoint("dns_selector_cg-fg_att", DNS_MODELS + "dns_selector_cg-fg_att.pth", "selector",
                        "selector network for CG + FG-Att"),
    PublishedCheckpoint("dns_selector_cg-fg_bin", DNS_MODELS + "dns_selector_cg-fg_bin.pth", "selector",
                        "selector network for CG + FG-Bin"),
    PublishedCheckpoint("itq_resnet50W_dns100k_1M", DNS_MODELS + "itq_resnet50W_dns100k_1M.pth", "itq",
                        "ITQ projection initialising FG-Bin's binarization"),
    PublishedCheckpoint("visil", VISIL_MODELS + "visil.pth", "teacher",
                        "ViSiL teacher (pair labelling, distillation)"),
    PublishedCheckpoint("pca_resnet50_vcdb_1M", VISIL_MODELS + "pca_resnet50_vcdb_1M.pth", "pca",
                        "PCA whitening of the features (3840 -> 512 dims)"),
    PublishedCheckpoint("resnet50", "https://download.pytorch.org/models/resnet50-0676ba61.pth",
                        RESNET_KIND, "torchvision ResNet50 IMAGENET1K_V1, the feature backbone"),
)}


class DownloadError(RuntimeError):
    """A checkpoint that could not be fetched, or that failed its checks."""


def checkpoint_kind(path: str | os.PathLike) -> str:
    """What the restricted reader loads ``path`` as: a :func:`detect_kind` kind or ``resnet50``.

    Raises:
        CheckpointFormatError: not a checkpoint the reader accepts.
    """
    state, _ = split_checkpoint(read_checkpoint(path))
    if {"conv1.weight", "layer4.2.conv3.weight", "fc.weight"} <= set(state):
        return RESNET_KIND
    return detect_kind(state)


def verify(path: str | os.PathLike, checkpoint: PublishedCheckpoint) -> None:
    """Raises DownloadError unless ``path`` loads as ``checkpoint.kind``."""
    try:
        kind = checkpoint_kind(path)
    except (CheckpointFormatError, OSError, ValueError) as error:
        raise DownloadError(f"{checkpoint.name}: {path} is not a readable checkpoint: {error}") from error
    if kind != checkpoint.kind:
        raise DownloadError(f"{checkpoint.name}: {path} loads as {kind}, expected {checkpoint.kind}")


def _fetch(url: str, part: pathlib.Path, timeout: float, max_bytes: int) -> int:
    """Streams ``url`` into ``part``; returns the byte count, checked against the announced one."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
        announced = response.headers.get("Content-Length")
        announced = int(announced) if announced and announced.isdigit() else None
        if announced is not None and announced > max_bytes:
            raise DownloadError(f"{url} announces {announced} bytes, more than the "
                                f"{max_bytes}-byte cap for a checkpoint")
        received = 0
        while chunk := response.read(_CHUNK_BYTES):
            received += len(chunk)
            if received > max_bytes:
                raise DownloadError(f"{url} sent more than the {max_bytes}-byte cap for a checkpoint")
            out.write(chunk)
    if announced is not None and received != announced:
        raise DownloadError(f"{url}: received {received} of the {announced} bytes announced "
                            f"(connection cut?)")
    if received == 0:
        raise DownloadError(f"{url}: empty file")
    return received


def download(names: Iterable[str], out: str | os.PathLike, *, mirror: str | None = None,
             timeout: float = 60.0, max_bytes: int = MAX_CHECKPOINT_BYTES,
             report: Callable[[str], None] = lambda line: None) -> list[pathlib.Path]:
    """Fetches and checks the named :data:`CHECKPOINTS` into ``out``; returns their paths.

    A file already in ``out`` that passes the checks is kept, not fetched again.

    Args:
        names: keys of :data:`CHECKPOINTS`.
        out: the directory to write into (created).
        mirror: a base URL (``https://``, ``http://``, ``file://``) holding the files under the
            authors' file names, used instead of the authors' servers.
        timeout: seconds a connection may stay silent.
        max_bytes: the largest file accepted.
        report: called with one line per file.

    Raises:
        KeyError: an unknown name.
        DownloadError: no network or server, a cut transfer, or a file failing its checks.
    """
    checkpoints = [CHECKPOINTS[name] for name in names]
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for checkpoint in checkpoints:
        path = out / checkpoint.filename
        if path.is_file():
            verify(path, checkpoint)
            report(f"{checkpoint.name}: {path} already there, loads as {checkpoint.kind}")
            paths.append(path)
            continue
        url = mirror.rstrip("/") + "/" + checkpoint.filename if mirror else checkpoint.url
        part = path.with_name(path.name + ".part")
        try:
            size = _fetch(url, part, timeout, max_bytes)
            verify(part, checkpoint)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            part.unlink(missing_ok=True)
            reason = getattr(error, "reason", None) or error
            raise DownloadError(f"cannot download {checkpoint.name} from {url}: {reason} (no network? "
                                f"fetch it where there is one and copy it to {out})") from error
        except DownloadError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, path)
        report(f"{checkpoint.name}: {path} ({size} bytes), loads as {checkpoint.kind}")
        paths.append(path)
    return paths
