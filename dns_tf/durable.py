"""Making file-system changes survive a crash.

A renamed or newly created file is durable only once the directory that names it is synced too:
``os.fsync`` on the file itself covers its bytes, not its directory entry.
"""

from __future__ import annotations

import os


def fsync_directory(path: str | os.PathLike) -> None:
    """Makes the renames and new files in directory ``path`` durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
