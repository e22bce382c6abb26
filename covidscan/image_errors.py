"""The error a scan's bytes raise when they are not an image that can be decoded."""


class ImageDecodeError(ValueError):
    """The bytes of a scan are not an image that can be decoded; the message says why."""
