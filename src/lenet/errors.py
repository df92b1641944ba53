"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class LenetError(Exception):
    """A mistake in the user's input or environment (bad file, bad flag), never a bug."""


class DataError(LenetError):
    """MNIST files are missing, corrupt or inconsistent."""


class CheckpointError(LenetError):
    """A checkpoint file cannot be read or does not match a known model."""


class ImageError(LenetError):
    """An outside image cannot be used: not an image, empty, truncated, too large, odd mode."""


class NoDigitError(LenetError):
    """An image was read but holds no digit (a blank page, only specks)."""
