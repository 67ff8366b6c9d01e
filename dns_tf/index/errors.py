"""The video index's own errors (shared by the index's stores and the ``VideoIndex``)."""


class VideoIndexError(Exception):
    """Base class of the index's own errors."""


class NotAnIndexError(VideoIndexError):
    """The directory is not a dns-tf video index."""


class IndexLockedError(VideoIndexError):
    """Another process holds the index open for writing."""


class IndexCorruptError(VideoIndexError):
    """Stored data fails its integrity checks."""


class DuplicateVideoError(VideoIndexError, ValueError):
    """A video id is already in the index (pass ``replace=True`` to overwrite it)."""
