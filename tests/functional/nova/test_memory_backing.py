"""Guests' memory backing with ``[dcmigrate_compute] memory_backing``.

Real Nova (API, conductor, scheduler, compute with our driver on
fakelibvirt): the domain XML Nova generates, and the destination XML of a
live migration, which Nova's own ``_update_memory_backing_xml`` strips of
the backing's source and access (libvirt would refuse the migration).
"""

from __future__ import annotations

from lxml import etree

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

    def _domain_xml(self, server: dict) -> str:
        conn = self.computes["src"].driver._host.get_connection()
        return conn.lookupByUUIDString(server["id"]).XMLDesc(0)

    def _boot_and_migrate(self) -> tuple[str, dict]:
        server = self._create_server(host="src", networks="none")
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
