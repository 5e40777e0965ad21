"""Guests' memory backing with ``[dcmigrate_compute] memory_backing``.

Real Nova (API, conductor, scheduler, compute with our driver on
fakelibvirt): the domain XML Nova generates, and the destination XML of a
live migration, which Nova's own ``_update_memory_backing_xml`` strips of
the backing's source and access (libvirt would refuse the migration).
"""

from __future__ import annotations

import fixtures
from lxml import etree
from nova.tests.fixtures import libvirt as fakelibvirt

from tests.functional.nova.test_driver import _DriverTestBase


def _backing(xml: str) -> tuple[str | None, str | None]:
    doc = etree.fromstring(xml.encode())
    mb = doc.find("memoryBacking")
    if mb is None:
        return None, None
    src, acc = mb.find("source"), mb.find("access")
    return (src.get("type") if src is not None else None,
            acc.get("mode") if acc is not None else None)


class MemoryBackingTest(_DriverTestBase):
    """fakelibvirt regenerates a domain's XML from what it parsed, without
    memoryBacking: the XML Nova defines is recorded here, and the running
    domain's full XML (flags 0, which the driver reads to keep the
    backing) returns it, as real libvirt does."""

    def setUp(self) -> None:
        self.defined: dict[str, str] = {}
        define = fakelibvirt.Connection.defineXML
        xmldesc = fakelibvirt.Domain.XMLDesc
        defined = self.defined

        def spy_define(conn, xml):
            dom = define(conn, xml)
            defined[dom.UUIDString()] = xml
            return dom

        def full_xml(dom, flags):
            if flags == 0 and dom.UUIDString() in defined:
                return defined[dom.UUIDString()]
            return xmldesc(dom, flags)

        self.useFixture(fixtures.MonkeyPatch(
            "nova.tests.fixtures.libvirt.Connection.defineXML", spy_define))
        self.useFixture(fixtures.MonkeyPatch(
            "nova.tests.fixtures.libvirt.Domain.XMLDesc", full_xml))
        super().setUp()

    def _domain_xml(self, server: dict) -> str:
        return self.defined[server["id"]]

    def _boot_and_migrate(self) -> tuple[str, dict]:
        server = self._create_server(host="src", networks="none")
        self.server = server        # LibvirtMigrationMixin's stub needs it
        xml = self._domain_xml(server)
        self._live_migrate(server, migration_expected_state="completed")
        self._wait_for_state_change(server, "ACTIVE")
        self.assertEqual(1, len(self.migrate_calls))
        return xml, self.migrate_calls[0]["params"]

    def test_memfd_by_default_and_kept_in_the_destination_xml(self) -> None:
        xml, params = self._boot_and_migrate()
        self.assertEqual(("memfd", "shared"), _backing(xml))
        self.assertEqual(("memfd", "shared"),
                         _backing(params["destination_xml"]))

    def test_file_mode_shares_ram_in_memory_backing_dir(self) -> None:
        self.flags(memory_backing="file", group="dcmigrate_compute")
        xml, params = self._boot_and_migrate()
        self.assertEqual((None, "shared"), _backing(xml))
        self.assertEqual((None, "shared"),
                         _backing(params["destination_xml"]))

    def test_anonymous_leaves_nova_alone(self) -> None:
        self.flags(memory_backing="anonymous", group="dcmigrate_compute")
        xml, params = self._boot_and_migrate()
        self.assertEqual((None, None), _backing(xml))
        self.assertEqual((None, None), _backing(params["destination_xml"]))
