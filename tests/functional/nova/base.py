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
from tests.unit.agent import inprocess

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


#: The adapter the agents of a test are reached through (shared with the
#: transport's unit tests).
InProcessAgents = inprocess.InProcessAgents


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
            manager = inprocess.start_agent(
                host, CONF, session_timeout=120.0,
                **self.DCMIGRATE_AGENT_CONF)
            self.addCleanup(manager.stop)
            self.agents.managers[host] = manager
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
