"""Shared fixtures: the reference material lives in ../shared/reference (read-only)."""

import os
import pathlib

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
REFERENCE = pathlib.Path(os.environ.get("DNS_TF_REFERENCE", REPO.parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def reference_dir() -> pathlib.Path:
    if not REFERENCE.is_dir():
        raise FileNotFoundError(
            f"reference material not found at {REFERENCE}; set DNS_TF_REFERENCE")
    return REFERENCE


@pytest.fixture(scope="session")
def checkpoints(reference_dir) -> pathlib.Path:
    return reference_dir / "checkpoints"


@pytest.fixture(scope="session")
def parity(reference_dir):
    with np.load(reference_dir / "parity.npz") as data:
        return {key: data[key] for key in data.files}
