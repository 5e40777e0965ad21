"""Live migrations through the agent transport, on Nova's harness.

The computes run DCMigrateLibvirtDriver with ``[dcmigrate_compute]
transport = agents`` (the deployment default) on Nova's in-process harness
(see ``test_redirect.py`` for what is real there).

What is replaced, on top of fakelibvirt's migration job:

* the agents' RPC: each host's agent is a REAL, started
  :class:`nova_dcmigrate.agent.manager.AgentManager` (peer listener on
  127.0.0.1, real prepare/validation/abort/cleanup, real source sessions
  listening on the attempt's UNIX socket), called in-process through
  :class:`InProcessAgents` -- a small adapter with ``AgentAPI``'s method
  signatures (``tests/unit/agent/inprocess.py``, shared with the
  transport's unit tests) that the harness mixin (``base.py``) hands to
  every ``AgentTransport`` through ``transport.default_agents`` (the
  transport's test seam) instead of an oslo.messaging client; each agent
  starts with its compute, so the computes report the
  CUSTOM_DCMIGRATE_AGENT trait;
* the agents' addresses: ``[dcmigrate_compute] agent_addresses`` maps every
  host to 127.0.0.1 (the harness's host names do not resolve).

No stream flows (fakelibvirt's ``migrateToURI3`` is the blocking stub of
``test_redirect.py``), so no page is stored or relayed; what is checked is
what the transport asks of libvirt and of the agents per attempt.
"""

from __future__ import annotations

import os
from pathlib import Path
import shutil
import time
from typing import Any

import fixtures
from nova import exception as nova_exception
from nova.tests.fixtures import libvirt as fakelibvirt
from nova.tests.functional.api import client

from nova_dcmigrate.agent.destination import DestinationSession
from nova_dcmigrate.agent import session as sess
from nova_dcmigrate.agent.source import SourceSession
from nova_dcmigrate.virt.libvirt import transport
from tests.functional.nova import base
from tests.functional.nova import test_redirect

HOSTS = test_redirect.HOSTS


#: Kept importable from here (see tests/unit/agent/inprocess.py).
InProcessAgents = base.InProcessAgents


class AgentTransportTest(test_redirect.RedirectTestBase):

    DCMIGRATE_TRANSPORT = "agents"

    def setUp(self) -> None:
        self.params: list[dict[str, Any]] = []
        # The harness mixin starts each host's agent with its compute.
        super().setUp()
        self.managers = self.agents.managers
        self.assertEqual(set(HOSTS), set(self.managers))
        self.assertEqual({h: "127.0.0.1" for h in HOSTS},
                         dict(base.CONF.dcmigrate_compute.agent_addresses))
        for host in HOSTS:
            drv = self.computes[host].driver
            self.assertIsInstance(drv.dcmigrate_transport,
                                  transport.AgentTransport)
            self.assertIs(self.agents, drv.dcmigrate_transport.agents)

    def _agent_calls(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Calls to the agents other than pings (the trait checks)."""
        return [c for c in self.agents.calls if c[1] != "ping"]

    def _migrate_stub(self, domain: Any, destination: str,
                      params: dict[str, Any], flags: int) -> None:
        self.params.append(dict(params, _flags=flags))
        super()._migrate_stub(domain, destination, params, flags)

    def _session(self, host: str, number: int) -> Any:
        return self.managers[host].sessions[(self.migration["uuid"], number)]

    def _check_attempt(self, number: int, host: str,
                       holders: list[str]) -> int:
        """Check attempt ``number`` (0-based); return its socket path."""
        params = self.params[number]
        uri = params["migrate_uri"]
        self.assertTrue(uri.startswith("unix:///"), uri)
        path = uri[len("unix://"):]
        # libvirt forbids a listen address with a unix URI.
        self.assertNotIn("listen_address", params)
        # Nova's own parameters are still there.
        self.assertIn("destination_xml", params)
        self.assertEqual(params["destination_xml"], params["persistent_xml"])

        mid = self.migration["uuid"]
        src = self._session("src", number)
        dst = self._session(host, number)
        self.assertIsInstance(src, SourceSession)
        self.assertIsInstance(dst, DestinationSession)
        self.assertEqual(("127.0.0.1", self.managers[host].listener.port),
                         (src.dest_address, src.dest_port))
        # The destination QEMU's socket (see InProcessAgents for why the
        # source agent's is another path here); both directories exist.
        self.assertEqual(path, dst.socket_path)
        self.assertTrue(os.path.isdir(dst.socket_dir))
        self.assertTrue(os.path.exists(src.socket_path))
        # One migration id and one secret for every attempt and host.
        self.assertEqual(self.managers["src"].secrets[mid],
                         self.managers[host].secrets[mid])
        self.assertEqual(
            [{"host": h, "address": "127.0.0.1",
              "port": self.managers[h].listener.port} for h in holders],
            dst.holders)
        return path

    def _wait_gone(self) -> None:
        """Every agent forgot the migration (cleanup after the end)."""
        deadline = time.monotonic() + test_redirect.WAIT_S
        while any(m.list_migrations({}) for m in self.managers.values()):
            if time.monotonic() > deadline:
                self.fail("agents still know %s" % {
                    h: m.list_migrations({})
                    for h, m in self.managers.items()})
            time.sleep(0.1)

    def test_redirects_through_the_agents(self) -> None:
        self._boot()
        self._start_migration("dest1")
        mid = self.migration["uuid"]
        p1 = self._check_attempt(0, "dest1", [])
        secret = self.managers["src"].secrets[mid]

        self._redirect("dest2")
        self._wait_attempt(2)
        self._wait_state("running")
        p2 = self._check_attempt(1, "dest2", ["dest1"])
        self.assertNotEqual(p1, p2)
        # The stopped attempt's sessions ended; its page store stays for
        # the relay.
        self.assertEqual(sess.SessionState.ABORTED,
                         self._session("dest1", 0).state)
        self.assertEqual(sess.SessionState.ABORTED,
                         self._session("src", 0).state)
        self.assertIn(mid, self.managers["dest1"].stores)

        self._redirect("dest3")
        attempt = self._wait_attempt(3)
        self._wait_state("running")
        self._check_attempt(2, "dest3", ["dest2", "dest1"])
        self.assertEqual(secret, self.managers["dest3"].secrets[mid])

        self._finish(attempt, "dest3")
        self._assert_finished_on("dest3", ("src", "dest1", "dest2"))
        self._wait_gone()
        self.assertEqual(
            {"src", "dest1", "dest2", "dest3"},
            {h for h, kw in self.agents.methods("cleanup")
             if kw["migration_id"] == mid})
        self.assertEqual(
            {}, self.computes["src"].driver.dcmigrate_transport.migrations)

    def test_rollback_cleans_the_agents(self) -> None:
        self._boot(volume=False)
        self._start_migration("dest1")
        self._check_attempt(0, "dest1", [])
        # A failed libvirt job: Nova's own failure path (in nova 34 the
        # instance goes to ERROR, as with the stock driver) -- the agents
        # must be left clean whatever Nova does.
        self.attempts[0].failed = True
        self.attempts[0].release.set()
        self._wait_migration("failed", "error")
        self._wait_gone()
        server = self.api.get_server(self.server["id"])
        self.assertEqual("src", server["OS-EXT-SRV-ATTR:host"])

    def test_unsupported_flags_refused_before_starting(self) -> None:
        self._boot(volume=False)
        src = self.computes["src"].driver
        src._live_migration_flags |= fakelibvirt.VIR_MIGRATE_PARALLEL
        errors: list[Exception] = []
        check = type(src).check_can_live_migrate_source

        def spy(*args: Any, **kwargs: Any) -> Any:
            try:
                return check(src, *args, **kwargs)
            except Exception as err:
                errors.append(err)
                raise

        self.useFixture(fixtures.MonkeyPatch(
            "nova_dcmigrate.virt.libvirt.driver.DCMigrateLibvirtDriver."
            "check_can_live_migrate_source",
            lambda drv, *a, **kw: spy(*a, **kw)))
        # The source pre-check fails for every candidate the conductor
        # tries: Nova answers NoValidHost (a 500 at this microversion) and
        # the migration ends in error before anything started.
        self.assertRaises(
            client.OpenStackApiException, self.api.post_server_action,
            self.server["id"],
            {"os-migrateLive": {"host": "dest1", "block_migration": "auto"}})
        self._wait_migration("error")
        server = self._wait_server("ACTIVE")
        self.assertEqual("src", server["OS-EXT-SRV-ATTR:host"])
        self.assertEqual([], self.attempts)
        # No agent was prepared (the trait checks only pinged).
        self.assertEqual([], self._agent_calls())
        self.assertTrue(errors)
        for err in errors:
            self.assertIsInstance(err, nova_exception.MigrationPreCheckError)
            self.assertIn("VIR_MIGRATE_PARALLEL", str(err))
            self.assertIn("not supported by the dcmigrate agents", str(err))

    def test_block_migration_with_native_tls_refused_before_starting(
            self) -> None:
        """The disks of a block migration bypass the agents (libvirt's NBD
        stream, disks_uri tcp://): with native TLS asked for they would
        cross in clear, so the source pre-check refuses the request."""
        self._boot(volume=False)
        # The harness's computes share one instances_path, which Nova's
        # stock check takes for shared storage (block migration refused
        # before our check): here the storage is declared local, the one
        # thing this in-process harness cannot have for real.
        for name in ("_check_shared_storage_test_file",
                     "_is_shared_block_storage"):
            self.useFixture(fixtures.MockPatch(
                "nova.virt.libvirt.driver.LibvirtDriver." + name,
                return_value=False))
        src = self.computes["src"].driver
        # What [libvirt] live_migration_with_native_tls adds at init_host.
        src._block_migration_flags |= fakelibvirt.VIR_MIGRATE_TLS
        self.assertTrue(src._block_migration_flags &
                        fakelibvirt.VIR_MIGRATE_NON_SHARED_INC)
        errors: list[Exception] = []
        check = type(src).check_can_live_migrate_source

        def spy(*args: Any, **kwargs: Any) -> Any:
            try:
                return check(src, *args, **kwargs)
            except Exception as err:
                errors.append(err)
                raise

        self.useFixture(fixtures.MonkeyPatch(
            "nova_dcmigrate.virt.libvirt.driver.DCMigrateLibvirtDriver."
            "check_can_live_migrate_source",
            lambda drv, *a, **kw: spy(*a, **kw)))
        self.assertRaises(
            client.OpenStackApiException, self.api.post_server_action,
            self.server["id"],
            {"os-migrateLive": {"host": "dest1", "block_migration": True}})
        self._wait_migration("error")
        server = self._wait_server("ACTIVE")
        self.assertEqual("src", server["OS-EXT-SRV-ATTR:host"])
        self.assertEqual([], self.attempts)
        self.assertEqual([], self._agent_calls())
        self.assertTrue(errors)
        for err in errors:
            self.assertIsInstance(err, nova_exception.MigrationPreCheckError)
            self.assertIn("VIR_MIGRATE_NON_SHARED_INC", str(err))
            self.assertIn("would cross in clear", str(err))

    def test_redirect_refused_when_the_new_hosts_agent_does_not_answer(
            self) -> None:
        self._boot()
        self._start_migration("dest1")
        self.stop_agent("dest2")
        calls_before = len(self.agents.calls)

        self._redirect("dest2")
        status = self._wait_state("running")
        error = status["last_error"]
        self.assertEqual("RedirectPreparationFailed", error["type"])
        self.assertEqual(
            ("dest2", "checking the dcmigrate agent on dest2", "dest1"),
            (error["data"]["host"], error["data"]["step"],
             error["data"]["destination"]))
        self.assertIn("no dcmigrate agent answers for host dest2",
                      error["data"]["reason"])
        self.assertIn("The migration continues to dest1", error["message"])
        # Refused before the old attempt was touched: still the first one,
        # never aborted, its agent sessions untouched; dest2 was only
        # pinged, and its placement claim released.
        self.assertEqual((1, False), (len(self.attempts),
                                      self.attempts[0].aborted))
        for host in ("src", "dest1"):
            self.assertNotEqual(sess.SessionState.ABORTED,
                                self._session(host, 0).state, host)
        self.assertEqual([("dest2", "ping")],
                         [(h, m) for h, m, _kw in
                          self.agents.calls[calls_before:]
                          if h == "dest2"])
        self.assertEqual([], [c for c in self.agents.calls[calls_before:]
                              if c[1] != "ping"])
        self._assert_running_to("dest1", ("dest2",), redirected=False)

        # Another host with an answering agent still can take it.
        self._redirect("dest3")
        attempt = self._wait_attempt(2)
        self._wait_state("running")
        self._check_attempt(1, "dest3", ["dest1"])
        self._finish(attempt, "dest3")
        self._assert_finished_on("dest3", ("src", "dest1", "dest2"))

    def test_redirect_refused_when_the_new_hosts_agent_cannot_prepare(
            self) -> None:
        """The new host's agent answers but refuses the attempt (its
        socket_dir is not a directory: a real LocalSocketError). The
        next attempt's agents are prepared before the running attempt is
        stopped (issue 13, part 4), so nothing of it is touched."""
        self._boot()
        self._start_migration("dest1")
        sdir = self.managers["dest2"].conf.socket_dir
        shutil.rmtree(sdir, ignore_errors=True)
        Path(sdir).write_text("not a directory")

        def restore() -> None:
            os.unlink(sdir)
            os.makedirs(sdir)
        self.addCleanup(restore)

        self._redirect("dest2")
        status = self._wait_state("running")
        error = status["last_error"]
        self.assertEqual("RedirectPreparationFailed", error["type"])
        self.assertEqual(("dest2", "preparing the agents", "dest1"),
                         (error["data"]["host"], error["data"]["step"],
                          error["data"]["destination"]))
        self.assertIn("The migration continues to dest1", error["message"])
        self.assertEqual((1, False), (len(self.attempts),
                                      self.attempts[0].aborted))
        for host in ("src", "dest1"):
            self.assertNotEqual(sess.SessionState.ABORTED,
                                self._session(host, 0).state, host)
        self._assert_running_to("dest1", ("dest2",), redirected=False)
        mid = self.migration["uuid"]
        self.assertNotIn(mid, self.managers["dest2"].list_migrations({}))

        # Another host still can take it; its agents were prepared ahead.
        self._redirect("dest3")
        attempt = self._wait_attempt(2)
        self._wait_state("running")
        self._check_attempt(1, "dest3", ["dest1"])
        self.assertEqual(sess.SessionState.ABORTED,
                         self._session("src", 0).state)
        self._finish(attempt, "dest3")
        self._assert_finished_on("dest3", ("src", "dest1", "dest2"))

    def test_repick_leaves_out_hosts_whose_agent_does_not_answer(
            self) -> None:
        self.flags(agent_check_interval=0, group="dcmigrate_compute")
        self._boot(volume=False)
        self._start_migration("dest1")
        for host in ("dest2", "dest3"):
            self.stop_agent(host)
        self._run_periodics()
        for host in HOSTS:
            traits = self._get_provider_traits(self.rp[host])
            self.assertEqual(host in ("src", "dest1"),
                             "CUSTOM_DCMIGRATE_AGENT" in traits, host)

        self._redirect()
        status = self._wait_state("running")
        error = status["last_error"]
        self.assertEqual("NoValidRedirectTarget", error["type"])
        self.assertEqual("CUSTOM_DCMIGRATE_AGENT", error["data"]["trait"])
        self.assertEqual((1, False), (len(self.attempts),
                                      self.attempts[0].aborted))
        self._assert_running_to("dest1", ("dest2", "dest3"),
                                redirected=False, volume=False)

        # dest3's agent is back: the next re-pick finds it.
        self.start_agent("dest3")
        self._run_periodics()
        self._redirect()
        attempt = self._wait_attempt(2)
        self.assertEqual("dest3", attempt.host)
        self._wait_state("running")
        self._finish(attempt, "dest3")
        self._assert_finished_on("dest3", ("src", "dest1", "dest2"),
                                 volume=False)


class NativeTLSWithoutAgentTLSTest(test_redirect.RedirectTestBase):
    """``live_migration_with_native_tls`` while the agents have no TLS:
    refused, never silently unencrypted."""

    DCMIGRATE_TRANSPORT = "agents"

    def test_native_tls_refused_when_agents_have_no_tls(self) -> None:
        self._boot(volume=False)
        # What Nova's driver does with live_migration_with_native_tls.
        self.computes["src"].driver._live_migration_flags |= \
            fakelibvirt.VIR_MIGRATE_TLS
        self.api.post_server_action(
            self.server["id"],
            {"os-migrateLive": {"host": "dest1", "block_migration": "auto"}})
        self._wait_migration("failed", "error")
        server = self.api.get_server(self.server["id"])
        self.assertEqual("src", server["OS-EXT-SRV-ATTR:host"])
        # No libvirt job ran and no session is left anywhere.
        self.assertEqual([], self.attempts)
        for m in self.agents.managers.values():
            self.assertEqual([], m.list_migrations({}))
        refused = [kw for h, kw in self.agents.methods(
            "prepare_destination")]
        self.assertTrue(refused and all(kw["tls"] for kw in refused))


class NativeTLSTest(AgentTransportTest):
    """``live_migration_with_native_tls`` with agents that have TLS: the
    agents are asked for it, libvirt is not (the stream must stay
    parseable)."""

    DCMIGRATE_AGENT_CONF: dict[str, Any] = {}

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        from nova_dcmigrate.lab.certs import LabCA
        import tempfile
        cls._pki = tempfile.mkdtemp(prefix="dcm-pki-")
        cert = LabCA(Path(cls._pki)).issue("agent", ["127.0.0.1"])
        cls.DCMIGRATE_AGENT_CONF = {
            "peer_tls": True, "peer_tls_ca_file": str(cert.ca_file),
            "peer_tls_cert_file": str(cert.cert_file),
            "peer_tls_key_file": str(cert.key_file)}

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls._pki, ignore_errors=True)
        super().tearDownClass()

    def test_native_tls_goes_to_the_agents(self) -> None:
        self._boot(volume=False)
        self.computes["src"].driver._live_migration_flags |= \
            fakelibvirt.VIR_MIGRATE_TLS
        self._start_migration("dest1")
        self._check_attempt(0, "dest1", [])
        self.assertFalse(self.params[0]["_flags"] &
                         fakelibvirt.VIR_MIGRATE_TLS)
        self.assertTrue(all(kw.get("tls") for _h, kw in
                            self.agents.methods("prepare_source")))
        self.assertTrue(self.managers["dest1"].ping({})["tls"])
        self.attempts[0].release.set()
        self._wait_migration("completed")
        self._wait_gone()

    # The parent's tests are not repeated with TLS.
    test_redirects_through_the_agents = None  # type: ignore[assignment]
    test_rollback_cleans_the_agents = None  # type: ignore[assignment]
    test_unsupported_flags_refused_before_starting = \
        None  # type: ignore[assignment]
    test_redirect_refused_when_the_new_hosts_agent_does_not_answer = \
        None  # type: ignore[assignment]
    test_repick_leaves_out_hosts_whose_agent_does_not_answer = \
        None  # type: ignore[assignment]
