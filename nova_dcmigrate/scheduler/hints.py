"""The scheduler hints that carry redirect knowledge to the weigher.

The orchestration knows which hosts still hold pages of the guest and how
fast the links from the source are; nova-scheduler does not. It passes
both in the RequestSpec's ``scheduler_hints``, whose values Nova stores as
lists of strings (``DictOfListOfStringsField``), and which users can also
set through the API (``os:scheduler_hints``, ``openstack server create
--hint``), so decoding accepts every shape those produce:

``dcmigrate_holders``
    host names: ``["old1", "old2"]``; an element may also be a
    comma-separated list (``["old1,old2"]``) or the value a bare string.
``dcmigrate_link_rates``
    ``host=rate`` strings, the rate a non-negative number in any unit that
    is the same for all hosts (the orchestration uses bytes per second):
    ``["new1=125000000", "new2=12500000"]``; commas separate entries too.

Malformed entries are logged and ignored: a hint can only make a host
more or less attractive, never fail the scheduling request.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping
import math

from oslo_log import log as logging

LOG = logging.getLogger(__name__)


def _elements(value: object) -> list[str]:
    """Split a hint value (None, str or list of str) into its entries."""
    if value is None:
        return []
    if isinstance(value, str):
        items: Iterable[object] = [value]
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = value
    else:
        items = [str(value)]
    result = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if part:
                result.append(part)
    return result


def _check_host(host: str) -> str:
    if not host or "," in host or "=" in host or host != host.strip():
        raise ValueError("invalid host name for a scheduler hint: %r" % host)
    return host


def encode_holders(hosts: Iterable[str]) -> list[str]:
    """Return the ``dcmigrate_holders`` hint value for ``hosts``.

    :param hosts: names of hosts whose agent stores pages of the guest.
    :raises ValueError: when a name is empty or contains ``,`` or ``=``.
    :returns: the sorted, de-duplicated names.
    """
    return sorted({_check_host(h) for h in hosts})


def encode_link_rates(rates: Mapping[str, float]) -> list[str]:
    """Return the ``dcmigrate_link_rates`` hint value for ``rates``.

    :param rates: ``{host: rate}``, rates finite and non-negative.
    :raises ValueError: for a bad host name or rate.
    :returns: ``host=rate`` strings sorted by host.
    """
    result = []
    for host in sorted(rates):
        rate = float(rates[host])
        if not math.isfinite(rate) or rate < 0:
            raise ValueError("invalid link rate %r for host %s"
                             % (rates[host], host))
        result.append("%s=%r" % (_check_host(host), rate))
    return result


def decode_holders(value: object) -> frozenset[str]:
    """Return the host names in a ``dcmigrate_holders`` hint value.

    :param value: the hint as Nova stores it (list of str), a bare string,
        or None when the hint is absent.
    :returns: the set of host names, empty when there are none.
    """
    return frozenset(_elements(value))


def decode_link_rates(value: object) -> dict[str, float]:
    """Return ``{host: rate}`` from a ``dcmigrate_link_rates`` hint value.

    Entries that are not ``host=rate`` with a finite, non-negative rate are
    logged and skipped. When a host appears twice the last entry wins.

    :param value: the hint as Nova stores it (list of str), a bare string,
        or None when the hint is absent.
    :returns: the measured rates by host name.
    """
    rates: dict[str, float] = {}
    for entry in _elements(value):
        host, sep, text = entry.partition("=")
        host = host.strip()
        try:
            if not sep or not host:
                raise ValueError(entry)
            rate = float(text)
            if not math.isfinite(rate) or rate < 0:
                raise ValueError(entry)
        except ValueError:
            LOG.warning("Ignoring malformed dcmigrate_link_rates entry "
                        "%(entry)r (expected host=rate with a rate >= 0)",
                        {"entry": entry})
            continue
        rates[host] = rate
    return rates
