"""Base pieces for running Nova's functional harness with our driver.

The harness is Nova's own, in-process: the real nova-api (through
wsgi-intercept), conductor, scheduler, placement (PlacementFixture), the
fake oslo.messaging transport, and nova-compute services whose libvirt is
Nova's fakelibvirt. Computes load the driver the way nova-compute does,
``nova.virt.driver.load_compute_driver`` with ``[DEFAULT] compute_driver``
set to :data:`COMPUTE_DRIVER`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterator
from typing import Any

import fixtures
from nova import conf as nova_conf
from nova.virt.libvirt import driver as libvirt_driver

from nova_dcmigrate.agent.manager import AgentManager
from nova_dcmigrate.virt.libvirt import driver as dcm_driver
from tests.unit.agent.harness import make_conf

CONF = nova_conf.CONF

#: What operators put in ``[DEFAULT] compute_driver``.
COMPUTE_DRIVER = dcm_driver.COMPUTE_DRIVER
STOCK_DRIVER = "libvirt.LibvirtDriver"
SHIM_MODULE = "nova.virt.dcmigrate"


def _installed_api_paste() -> str:
    """Return the api-paste.ini installed with the nova distribution.

    Nova's ConfFixture looks for ``<state_path>/etc/nova/api-paste.ini``,
    i.e. under site-packages, but pip installs the wheel's data files under
    ``sys.prefix``. Find it in the distribution's RECORD instead.
    """
    for path in importlib.metadata.files("nova") or ():
        if path.name == "api-paste.ini":
            return str(path.locate())
    return os.path.join(sys.prefix, "etc", "nova", "api-paste.ini")


class NovaVirtShim(fixtures.Fixture):
    """Require the installed ``nova.virt.dcmigrate`` shim package.

    The tests load the driver exactly as a deployment does, so the shim must
    come from nova-dcmigrate's wheel (``tox -e nova-functional`` installs
    one; an editable install has no shim, see ``setup.py``). Nothing is
    patched into ``nova.virt``.
    """

    def _setUp(self) -> None:
        if importlib.util.find_spec(SHIM_MODULE) is None:
            raise AssertionError(
                "%s is not installed: install nova-dcmigrate from a wheel "
                "(tox -e nova-functional)" % SHIM_MODULE)


class InProcessAgents:
    """``AgentAPI`` look-alike calling each host's AgentManager directly.

    A host missing from ``managers`` has no agent that answers: every call
    to it raises, as an RPC call to an absent agent times out.

    The in-process "hosts" share one filesystem, so each agent has its own
    socket_dir (one path would name one socket); in a deployment the
    path is the same on both hosts, so the source's answer carries the
    destination's path here (the only thing this adapter changes).
    """

    def __init__(self, managers: dict[str, AgentManager]) -> None:
        self.managers = managers
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self._dest_socket: dict[tuple[str, int], str] = {}

    def _call(self, host: str, method: str, **kwargs: Any) -> Any:
        self.calls.append((host, method, kwargs))
        if host not in self.managers:
            raise RuntimeError("no agent on host %s" % host)
        return getattr(self.managers[host], method)({}, **kwargs)

    def ping(self, host: str,
             timeout: float | None = None) -> dict[str, Any]:
        return self._call(host, "ping")

    def prepare_destination(self, host: str, migration_id: str, secret: str,
                            attempt: int = 0,
                            holders: list[dict[str, Any]] | None = None,
                            split: bool = True,
                            source_rate: float | None = None,
                            tls: bool = False,
                            guest_memory: int | None = None
                            ) -> dict[str, Any]:
        result = self._call(host, "prepare_destination",
                            migration_id=migration_id, secret=secret,
                            attempt=attempt, holders=holders, split=split,
                            source_rate=source_rate, tls=tls,
                            guest_memory=guest_memory)
        self._dest_socket[(migration_id, attempt)] = result["socket"]
        return result

    def prepare_source(self, host: str, migration_id: str, secret: str,
                       dest_address: str, dest_port: int,
                       attempt: int = 0, tls: bool = False
                       ) -> dict[str, Any]:
        result = self._call(host, "prepare_source",
                            migration_id=migration_id, secret=secret,
                            dest_address=dest_address, dest_port=dest_port,
                            attempt=attempt, tls=tls)
        return dict(result, socket=self._dest_socket.get(
            (migration_id, attempt), result["socket"]))

    def get_status(self, host: str, migration_id: str) -> dict[str, Any]:
        return self._call(host, "get_status", migration_id=migration_id)

    def supports_attempt_abort(self) -> bool:
        return True

    def abort(self, host: str, migration_id: str,
              reason: str = "aborted by request",
              attempt: int | None = None) -> None:
        self._call(host, "abort", migration_id=migration_id, reason=reason,
                   attempt=attempt)

    def cleanup(self, host: str, migration_id: str) -> None:
        self._call(host, "cleanup", migration_id=migration_id)

    def methods(self, name: str) -> list[tuple[str, dict[str, Any]]]:
        return [(h, kw) for h, m, kw in self.calls if m == name]


class DCMigrateDriverMixin:
    """Put first in the bases of a Nova libvirt functional test class.

    Every compute service the test starts with the stock
    ``libvirt.LibvirtDriver`` gets :data:`COMPUTE_DRIVER` instead (the
    value stays set, as in a deployment's nova.conf), and the mixin checks
    that the loaded driver really is ours; a compute with any other driver
    fails the test. Nothing else in the Nova test changes.
    """

    #: ``[dcmigrate_compute] transport`` of the computes. Direct by
    #: default: fakelibvirt moves no stream. With "agents", every compute
    #: started with our driver gets a real, started in-process
    #: ``AgentManager`` (``self.agents.managers[host]``, peer listener on
    #: 127.0.0.1), reached through :class:`InProcessAgents` instead of the
    #: message bus; ``stop_agent`` makes one stop answering.
    DCMIGRATE_TRANSPORT = "direct"
    #: ``[dcmigrate_agent]`` overrides of the in-process agents.
    DCMIGRATE_AGENT_CONF: dict[str, Any] = {}

    # The attributes below come from nova.test.TestCase.
    _testMethodName: str
    useFixture: Any
    addCleanup: Any

    def setUp(self) -> None:
        self.useFixture(NovaVirtShim())
        CONF.set_override("transport", self.DCMIGRATE_TRANSPORT,
                          group="dcmigrate_compute")
        #: The agents every AgentTransport of this test talks to (no
        #: message bus; transport.default_agents is replaced).
        self.agents = InProcessAgents({})
        self.useFixture(fixtures.MonkeyPatch(
            "nova_dcmigrate.virt.libvirt.transport.default_agents",
            lambda: self.agents))
        # An override set before ConfFixture exists survives its defaults
        # and is cleared by its reset() at the end of the test.
        CONF.set_override("api_paste_config", _installed_api_paste(),
                          group="wsgi")
        self._dcmigrate_swap = True
        super().setUp()  # type: ignore[misc]

    @contextlib.contextmanager
    def stock_driver(self) -> Iterator[None]:
        """Start compute services with the stock driver in this block."""
        self._dcmigrate_swap = False
        try:
            yield
        finally:
            self._dcmigrate_swap = True

    def start_agent(self, host: str) -> AgentManager:
        """Start ``host``'s in-process dcmigrate agent (if not running)."""
        manager = self.agents.managers.get(host)
        if manager is None:
            manager = AgentManager(
                make_conf(session_timeout=120.0,
                          **self.DCMIGRATE_AGENT_CONF).dcmigrate_agent,
                host)
            manager.start()
            self.addCleanup(manager.stop)
            self.agents.managers[host] = manager
            # The harness's host names do not resolve.
            addresses = dict(CONF.dcmigrate_compute.agent_addresses)
            addresses[host] = "127.0.0.1"
            CONF.set_override("agent_addresses", addresses,
                              group="dcmigrate_compute")
        return manager

    def stop_agent(self, host: str) -> None:
        """``host``'s agent stops answering (as if it were down)."""
        self.agents.managers.pop(host).stop()

    def start_service(self, name: str, host: str | None = None,
                      **kwargs: Any) -> Any:
        libvirt_compute = name == "compute"
        if (libvirt_compute and self._dcmigrate_swap and host is not None
                and self.DCMIGRATE_TRANSPORT == "agents"):
            # Before the service starts: its first provider tree update
            # pings the agent.
            self.start_agent(host)
        if libvirt_compute:
            if CONF.compute_driver not in (STOCK_DRIVER, COMPUTE_DRIVER):
                raise AssertionError(
                    "compute_driver %s is not the libvirt driver"
                    % CONF.compute_driver)
            CONF.set_override("compute_driver",
                              COMPUTE_DRIVER if self._dcmigrate_swap
                              else STOCK_DRIVER)
        svc = super().start_service(  # type: ignore[misc]
            name, host=host, **kwargs)
        if libvirt_compute:
            # restart_compute_service() may hand the previous driver object
            # to the new manager; either way it has to be the expected one.
            driver = svc.manager.driver
            if self._dcmigrate_swap:
                ok = isinstance(driver, dcm_driver.DCMigrateLibvirtDriver)
            else:
                ok = type(driver) is libvirt_driver.LibvirtDriver
            if not ok:
                raise AssertionError("compute %s runs unexpected driver %r"
                                     % (host, type(driver)))
        return svc

    def _run_periodics(self) -> None:
        # Our driver's periodic housekeeping (agent ping for the trait,
        # redirect clean-up retries) runs in its own thread every
        # housekeeping_interval; the tests run one round of it with Nova's
        # periodic tasks instead of waiting.
        for svc in getattr(self, "computes", {}).values():
            driver = svc.manager.driver
            if isinstance(driver, dcm_driver.DCMigrateLibvirtDriver):
                driver.dcmigrate_housekeeping()
        super()._run_periodics()  # type: ignore[misc]

    def _clear_attrs(self) -> None:
        # nova.test.TestCase._clear_attrs deletes every public instance
        # attribute; under pytest one of them is the bound test method that
        # pytest's unittest support set and deletes itself afterwards.
        name = self._testMethodName
        saved = self.__dict__.get(name)
        super()._clear_attrs()  # type: ignore[misc]
        if saved is not None:
            self.__dict__[name] = saved
