"""Typed errors. Every failure that ends in a manifest row carries a stable ``reason``."""

from __future__ import annotations


class PixarcError(Exception):
    """Base class of every error pixarc raises on purpose."""

    reason = "error"


class InputError(PixarcError):
    """A source object cannot be archived as it is (not an image, truncated, too large...)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class ContainerError(PixarcError):
    """A ``.pxa`` byte string is not a valid container (bad magic, CRC, truncated...)."""

    reason = "corrupt_container"


class CodecError(PixarcError):
    """A codec could not encode or decode (unsupported mode, corrupt payload...)."""

    reason = "codec_error"


class VerificationError(PixarcError):
    """A bitstream decoded to something other than what its row promises."""

    reason = "verification_failed"


class PolicyError(PixarcError):
    """The routing policy file is invalid or names nothing usable."""

    reason = "policy_error"


class PluginError(PixarcError):
    """A plugin broke the hook contract (duplicate codec id, bad class...)."""

    reason = "plugin_error"


class MissingPluginError(PixarcError):
    """A bitstream names a codec no installed plugin provides: an environment problem (install
    the distribution named in the message), not damage to the archive."""

    reason = "missing_plugin"


class ManifestError(PixarcError, ValueError):
    """A manifest part does not match its commit marker (or cannot be read)."""

    reason = "corrupt_manifest_part"


class NotAnArchiveError(PixarcError):
    """The path given as DEST holds no pixarc archive."""

    reason = "not_an_archive"


# Packages whose exceptions mean "the object store refused or could not be reached"
# (a wrong endpoint, missing credentials, a network failure): an environment problem the
# operator fixes with the URL or --storage-option, not a pixarc bug.
_STORAGE_PACKAGES = ("botocore", "aiobotocore", "s3fs", "gcsfs", "adlfs", "aiohttp", "google", "azure")


def storage_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) comes from an object-store backend."""
    seen = 0
    while exc is not None and seen < 8:
        if type(exc).__module__.split(".")[0] in _STORAGE_PACKAGES:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False
