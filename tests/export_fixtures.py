"""The reference checkpoints as Keras networks, and their export; shared by the export and client
tests (``from export_fixtures import load_networks``)."""

from __future__ import annotations

import pathlib

from dns_tf.convert import load_official

CHECKPOINTS = {"coarse": "cg_student.pth", "bin": "fg_bin_student.pth",
               "att": "fg_att_student.pth", "selector": "selector.pth",
               "teacher": "visil_teacher.pth"}


def load_networks(checkpoints: pathlib.Path, *names: str) -> dict:
    """``{name: network}`` for names of :data:`CHECKPOINTS` (all of them by default)."""
    return {name: load_official(checkpoints / CHECKPOINTS[name]) for name in names or CHECKPOINTS}
