"""Error types. Every error siglite raises for bad input is a `SigliteError` with a one-line message."""


class SigliteError(Exception):
    """Base class for siglite's user-facing errors (one-line message, names the file or field)."""


class LoadError(SigliteError):
    """A checkpoint folder, hub id, config or weight file cannot be loaded as asked."""


class ImageError(SigliteError):
    """An image input cannot be decoded; the message names the input."""

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")
