"""The one base of nova-dcmigrate's errors: msg_fmt, kwargs, attributes.

Every error class of the package derives from
:class:`nova_dcmigrate.exception.DcmigrateError`; these tests pin what
callers and oslo.messaging rely on (data in ``kwargs`` and as attributes,
a message even when the data does not fit the format) and check every
class's format against its own placeholders.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from typing import Any

import pytest

import nova_dcmigrate
from nova_dcmigrate.agent import exception as agent_exception
from nova_dcmigrate import exception
from nova_dcmigrate.stream import exception as stream_exception

#: ``%(name)<flags><conversion>`` in a msg_fmt.
_PLACEHOLDER = re.compile(r"%\((\w+)\)[-#0 +]*\d*(?:\.\d+)?([a-zA-Z])")


def _all_error_classes() -> list[type[exception.DcmigrateError]]:
    """Every DcmigrateError subclass of the modules that import here."""
    for mod in pkgutil.walk_packages(nova_dcmigrate.__path__,
                                     "nova_dcmigrate."):
        try:
            importlib.import_module(mod.name)
        except Exception:  # noqa: BLE001 - optional deps (libvirt, nova)
            continue
    seen: list[type[exception.DcmigrateError]] = []
    todo: list[type[exception.DcmigrateError]] = [exception.DcmigrateError]
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo.extend(cls.__subclasses__())
    return seen


def _sample(fmt: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, conv in _PLACEHOLDER.findall(fmt):
        values[name] = 7 if conv in "dioxXc" else (
            1.5 if conv in "eEfFgG" else "<%s>" % name)
    return values


def test_message_from_kwargs_and_data_as_attributes() -> None:
    err = agent_exception.PeerConnectError(peer="10.0.0.2:16590",
                                           reason="refused")
    assert str(err) == err.message == \
        "Cannot connect to 10.0.0.2:16590: refused"
    assert (err.peer, err.reason) == ("10.0.0.2:16590", "refused")
    assert err.kwargs == {"peer": "10.0.0.2:16590", "reason": "refused"}
    with pytest.raises(AttributeError):
        err.migration_id  # noqa: B018 - not part of its data


def test_explicit_message_wins_and_keeps_the_data() -> None:
    err = agent_exception.AgentError("said so", migration_id="m")
    assert (str(err), err.migration_id) == ("said so", "m")


def test_data_that_does_not_fit_still_gives_a_message() -> None:
    # A formatting bug must not replace the original failure.
    err = agent_exception.RamLayoutTooLarge(migration_id="m")
    assert str(err) == agent_exception.RamLayoutTooLarge.msg_fmt
    err = agent_exception.RamLayoutTooLarge(
        migration_id="m", announced="many", block="pc.ram", largest=1,
        limit=2)
    assert str(err) == agent_exception.RamLayoutTooLarge.msg_fmt


@pytest.mark.parametrize("cls,kwargs,text", [
    (stream_exception.StreamError, {}, "invalid migration stream"),
    (stream_exception.StreamError, {"offset": 12, "reason": "r"},
     "stream offset 12: r"),
    (stream_exception.TruncatedStreamError, {"reason": "r"},
     "stream ended early: r"),
    (stream_exception.TruncatedStreamError, {"offset": 0, "reason": "r"},
     "stream offset 0: stream ended early: r"),
    (stream_exception.UnsupportedStreamError,
     {"feature": "xbzrle", "reason": "r"},
     "unsupported migration feature 'xbzrle': r"),
    (stream_exception.UnsupportedStreamError,
     {"offset": 3, "feature": "xbzrle", "reason": "r"},
     "stream offset 3: unsupported migration feature 'xbzrle': r"),
    # No feature: the format as it is, as the base does.
    (stream_exception.UnsupportedStreamError, {"reason": "r"},
     stream_exception.UnsupportedStreamError.msg_fmt_no_offset),
])
def test_stream_errors_with_and_without_an_offset(
        cls: type[stream_exception.StreamError], kwargs: dict[str, Any],
        text: str) -> None:
    err = cls(**kwargs)
    assert str(err) == text
    assert err.offset == kwargs.get("offset")


def test_every_error_class_formats_its_own_data() -> None:
    classes = _all_error_classes()
    # The package's exception modules at least (others need extras).
    names = {c.__module__ for c in classes}
    assert {"nova_dcmigrate.exception", "nova_dcmigrate.agent.exception",
            "nova_dcmigrate.stream.exception",
            "nova_dcmigrate.lab.exception",
            "nova_dcmigrate.scheduler.exception",
            "nova_dcmigrate.compute.exception"} <= names
    for cls in classes:
        cases: list[tuple[str, dict[str, Any]]] = [(cls.msg_fmt, {})]
        if issubclass(cls, stream_exception.StreamError):
            cases = [(cls.msg_fmt, {"offset": 7}),
                     (cls.msg_fmt_no_offset, {"offset": None})]
        for fmt, extra in cases:
            kwargs = dict(_sample(fmt), **extra)
            err = cls(**kwargs)
            assert str(err) == fmt % kwargs, cls
            assert "%(" not in str(err), cls
            for name, value in kwargs.items():
                assert getattr(err, name) == value, (cls, name)
