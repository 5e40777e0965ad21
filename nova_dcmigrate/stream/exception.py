"""Errors raised by the migration-stream codec.

A stream-level proxy must stop at the first byte it cannot account for:
forwarding a desynchronised stream would corrupt the destination's RAM
(reference ``qemu-migration-stream.md`` section 2).  Every error therefore
names the absolute stream offset where the offending element starts, plus
the record type and RAM block when they are known, as keyword arguments
(readable as attributes, e.g. ``err.offset``).

::

    StreamError                 offset, reason[, record, block]
     +-- TruncatedStreamError   input ended mid-element or before the tail
     +-- MalformedStreamError   bytes that no QEMU would send or accept
     +-- UnsupportedStreamError feature a proxy cannot follow (+ feature)
     +-- UnknownBlockError      block not announced by START(ram) (+ block)
     +-- PageOutOfRangeError    page offset outside its block
                                (+ block, page_offset, used_length)
"""

from __future__ import annotations

from typing import Any

from nova_dcmigrate import exception


class StreamError(exception.DcmigrateError):
    """Base class of all codec errors.

    Kwargs: ``offset`` (absolute stream byte offset of the bad element, or
    ``None`` when the error is not tied to a stream position), ``reason``
    (human-readable detail), and where relevant ``record`` (RAM flag name
    such as ``"PAGE"``) and ``block`` (RAM block name).
    """

    msg_fmt = "stream offset %(offset)d: %(reason)s"
    #: Format used when ``offset`` is None.
    msg_fmt_no_offset = "%(reason)s"

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("offset", None)
        kwargs.setdefault("reason", "invalid migration stream")
        super().__init__(message, **kwargs)

    def _template(self) -> str:
        if self.kwargs["offset"] is None:
            return self.msg_fmt_no_offset
        return self.msg_fmt


class TruncatedStreamError(StreamError):
    """The input ended inside an element, or before the END(ram) footer."""

    msg_fmt = "stream offset %(offset)d: stream ended early: %(reason)s"
    msg_fmt_no_offset = "stream ended early: %(reason)s"


class MalformedStreamError(StreamError):
    """Bytes that violate the stream format (magic, lengths, ids, flags)."""

    msg_fmt = "stream offset %(offset)d: malformed stream: %(reason)s"
    msg_fmt_no_offset = "malformed stream: %(reason)s"


class UnsupportedStreamError(StreamError):
    """A valid stream that uses a feature a proxy cannot follow.

    Extra kwarg ``feature``: a short identifier such as ``"xbzrle"``,
    ``"postcopy-advise"``, ``"early-setup"`` or ``"mapped-ram"``.
    """

    msg_fmt = ("stream offset %(offset)d: unsupported migration feature "
               "'%(feature)s': %(reason)s")
    msg_fmt_no_offset = ("unsupported migration feature '%(feature)s': "
                         "%(reason)s")


class UnknownBlockError(StreamError):
    """A RAM record names a block that START(ram) did not announce."""

    msg_fmt = "stream offset %(offset)d: %(reason)s"


class PageOutOfRangeError(StreamError):
    """A RAM record's page offset lies outside its block.

    Extra kwargs ``block``, ``page_offset`` (byte offset inside the block)
    and ``used_length`` (the block's announced length).
    """

    msg_fmt = "stream offset %(offset)d: %(reason)s"
