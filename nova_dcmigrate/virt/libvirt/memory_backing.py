"""Guest RAM the dcmigrate agents can hold: memoryBacking of Nova's guests.

Why: a destination agent holds the RAM of the QEMU it feeds instead of
copying every page it forwards (``nova_dcmigrate.agent.ram_backing``), but
only when that RAM is shared: a memfd (``<source type='memfd'/>``) or a
file in libvirt's ``memory_backing_dir`` (``<access mode='shared'/>``).
``[dcmigrate_compute] memory_backing`` chooses:

``memfd`` (default)
    New guests (boot, hard reboot, rebuild, cold migration: whenever Nova
    builds the domain XML) get ``<source type='memfd'/><access
    mode='shared'/>``, unless Nova already chose a backing for them
    (huge pages, ``[libvirt] file_backed_memory``: those are shared files
    already, or not shareable -- left alone).
``file``
    Guests get ``<access mode='shared'/>`` only: QEMU puts their RAM in a
    file in qemu.conf's ``memory_backing_dir``, which must be a tmpfs (its
    default is on disk).  Also added to the destination XML of a guest
    booted without it, so running guests are covered from their first
    migration on (libvirt compares only the source type, not the access).
``anonymous``
    Nothing changes; the agents copy the pages they forward (capped by
    ``[dcmigrate_agent] copy_store_max_mib``).

libvirt refuses a migration whose destination ``<memoryBacking><source
type>`` differs from the running domain's, and Nova's destination XML
drops ``source``/``access`` (``_update_memory_backing_xml``); so the
running domain's ones are put back into it (:func:`keep_backing`).  A guest
booted before the option (anonymous RAM, ``memfd`` mode) cannot switch to
memfd while it runs: it migrates as before and its destination agent
copies pages (logged), until it is next hard-rebooted or cold-migrated.
Trade-offs of shared guest RAM: KSM does not merge it, and transparent
huge pages need ``shmem_enabled`` (see the agent documentation).
"""

from __future__ import annotations

import copy
from typing import Any

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

MEMFD = "memfd"
FILE = "file"
ANONYMOUS = "anonymous"
MODES = (MEMFD, FILE, ANONYMOUS)
#: libvirt's VIR_MIGRATE_PARAM_DEST_XML / _PERSIST_XML.
XML_PARAMS = ("destination_xml", "persistent_xml")


def configure(membacking: Any, mode: str, instance: Any = None) -> Any:
    """Nova's ``LibvirtConfigGuestMemoryBacking`` (or None) for a new
    domain, with the shared backing ``mode`` asks for."""
    if mode == ANONYMOUS:
        return membacking
    if membacking is not None and (membacking.hugepages or
                                   membacking.filesource):
        LOG.debug("memory backing chosen by Nova (huge pages or file "
                  "backed) kept", instance=instance)
        return membacking
    from nova.virt.libvirt import config as vconfig
    cls = _memfd_class(vconfig.LibvirtConfigGuestMemoryBacking)
    new = cls()
    if membacking is not None:
        new.__dict__.update(membacking.__dict__)
    new.sharedaccess = True
    new.memfd = mode == MEMFD
    return new


_CLASSES: dict[type, type] = {}


def _memfd_class(base: Any) -> type:
    """A subclass of Nova's config class that can say ``memfd``."""
    if base not in _CLASSES:
        def format_dom(self: Any) -> Any:
            root = base.format_dom(self)
            if getattr(self, "memfd", False):
                from lxml import etree
                src = etree.Element("source", type="memfd")
                access = root.find("access")
                if access is not None:
                    access.addprevious(src)
                else:
                    root.append(src)
            return root
        _CLASSES[base] = type("DCMigrateMemoryBacking", (base,),
                              {"format_dom": format_dom, "memfd": False})
    return _CLASSES[base]


def _backing_of(doc: Any) -> tuple[str | None, str | None]:
    mb = doc.find("memoryBacking")
    if mb is None:
        return None, None
    src, acc = mb.find("source"), mb.find("access")
    return (src.get("type") if src is not None else None,
            acc.get("mode") if acc is not None else None)


def fix_xml(xml: str, running_xml: str, mode: str) -> str:
    """The destination XML ``xml`` with the running domain's backing
    source and access (and shared access in ``file`` mode)."""
    from lxml import etree
    parser = etree.XMLParser(remove_blank_text=False)
    running = etree.fromstring(running_xml.encode(), parser)
    src_type, access = _backing_of(running)
    if mode == FILE and src_type is None and access is None:
        access = "shared"
    if src_type is None and access is None:
        return xml
    doc = etree.fromstring(xml.encode(), parser)
    if _backing_of(doc) == (src_type, access):
        return xml
    mb = doc.find("memoryBacking")
    if mb is None:
        mb = etree.Element("memoryBacking")
        anchor = doc.find("currentMemory")
        if anchor is None:
            anchor = doc.find("memory")
        if anchor is not None:
            anchor.addnext(mb)
        else:
            doc.append(mb)
    for tag in ("source", "access"):
        for old in mb.findall(tag):
            mb.remove(old)
    before = mb.find("allocation")
    for tag, attr, value in (("source", "type", src_type),
                             ("access", "mode", access)):
        if value is None:
            continue
        el = etree.Element(tag, **{attr: value})
        if before is not None:
            before.addprevious(el)
        else:
            mb.append(el)
    return str(etree.tostring(doc, encoding="unicode"))


class _KeepBackingDomain:
    """The guest's domain, whose ``migrateToURI3`` keeps the memory
    backing in the destination XML Nova built."""

    def __init__(self, domain: Any, mode: str, instance: Any) -> None:
        self._dcmb_domain = domain
        self._dcmb_mode = mode
        self._dcmb_instance = instance

    def migrateToURI3(self, dconnuri: str, params: dict[str, Any],
                      flags: int) -> Any:
        params = dict(params)
        try:
            running = self._dcmb_domain.XMLDesc(0)
            for key in XML_PARAMS:
                if params.get(key):
                    params[key] = fix_xml(params[key], running,
                                          self._dcmb_mode)
            src_type, access = _backing_of(_parse(running))
            if access != "shared" and self._dcmb_mode != ANONYMOUS:
                LOG.warning("This instance's RAM is not shared (booted "
                            "before [dcmigrate_compute] memory_backing = "
                            "%(mode)s): the destination's dcmigrate agent "
                            "copies the pages it forwards, up to its "
                            "copy_store_max_mib, until the instance is "
                            "hard-rebooted or cold-migrated",
                            {"mode": self._dcmb_mode},
                            instance=self._dcmb_instance)
        except Exception as err:  # noqa: BLE001 - never fail a migration
            LOG.warning("Cannot keep the memory backing in the destination "
                        "XML: %(err)s", {"err": err},
                        instance=self._dcmb_instance)
        return self._dcmb_domain.migrateToURI3(dconnuri, params=params,
                                               flags=flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dcmb_domain, name)


def _parse(xml: str) -> Any:
    from lxml import etree
    return etree.fromstring(xml.encode())


def keep_backing(guest: Any, mode: str, instance: Any = None) -> Any:
    """A copy of Nova's ``Guest`` whose migration keeps the running
    domain's memory backing (see the module docstring)."""
    if mode == ANONYMOUS:
        return guest
    wrapped = copy.copy(guest)
    wrapped._domain = _KeepBackingDomain(guest._domain, mode, instance)
    return wrapped
