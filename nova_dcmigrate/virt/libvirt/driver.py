"""Nova libvirt compute driver that takes part in dcmigrate redirects.

``DCMigrateLibvirtDriver`` is the stock ``LibvirtDriver`` of nova 34.0.0
plus the hooks nova-dcmigrate needs on a compute host. It exists because
Nova offers no other in-process extension point on the compute side: the
custom compute manager and ``nova.hooks`` are gone, and a redirect must
drive ``migrateToURI3`` itself (see below). Without a redirect it behaves
exactly like the stock driver; that is checked by re-running Nova's own
libvirt live-migration functional tests against it
(``tests/functional/nova``).

Loading
-------

nova-compute imports ``'nova.virt.' + [DEFAULT] compute_driver``
(``nova.virt.driver.load_compute_driver``), so an out-of-tree driver must
be reachable under ``nova.virt``. A one-line shim package
``nova.virt.dcmigrate``, installed into nova's ``nova/virt/`` directory
(the nova-lxd and compute-hyperv pattern), re-exports this class.
Operators set::

    [DEFAULT]
    compute_driver = dcmigrate.DCMigrateLibvirtDriver

All ``[libvirt]`` options keep their meaning.

What it adds today
------------------

* The placement trait ``CUSTOM_DCMIGRATE_AGENT`` on the compute node
  resource provider, so that a redirect can ask the scheduler for hosts
  that run a dcmigrate agent (``required=CUSTOM_DCMIGRATE_AGENT``).

How live migrations will be routed (later work)
-----------------------------------------------

Stock Nova makes the source libvirt connect straight to the destination
QEMU: ``Guest.migrate`` calls ``migrateToURI3(qemu+tcp://DEST/system,
{migrate_uri: tcp://DEST, ...})`` and never sets a listen address. For a
dcmigrate migration this driver will override ``_live_migration_operation``
and hand the libvirt job to the libvirt-level controller
(``nova_dcmigrate.virt.libvirt.controller.RedirectableMigration``), which
per attempt:

1. prepares the destination agent (oslo.messaging RPC, topic
   ``dcmigrate-agent``) on a free local port P, and the source agent to
   listen on 127.0.0.1:P and relay to the destination agent over the
   authenticated agent-to-agent link;
2. calls ``migrateToURI3`` with ``VIR_MIGRATE_PARAM_URI = tcp://127.0.0.1:P``
   and ``VIR_MIGRATE_PARAM_LISTEN_ADDRESS = 127.0.0.1``, so that the source
   QEMU sends to its local agent and the destination QEMU listens only for
   its local agent. ``PARALLEL``, ``POSTCOPY``, ``COMPRESSED``,
   ``TUNNELLED`` and ``TLS`` are refused for such migrations: the agents
   parse the single precopy stream.

Nova's monitor (job stats, completion timeout, force-complete, abort) and
its ``post_method``/``recover_method`` stay in charge. A redirect aborts
only the libvirt job to the old destination (``abortJob``), keeps the pages
that destination received (its agent forwards them to the new one), moves
the Nova-side state (placement, port bindings, volume attachments) and
starts the next attempt; only the final attempt calls Nova's
``post_method``. Migrations that dcmigrate does not handle keep the stock
path unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

from nova.virt.libvirt import driver as libvirt_driver
from oslo_log import log as logging

if TYPE_CHECKING:
    from nova.compute import provider_tree as nova_provider_tree

LOG = logging.getLogger(__name__)

#: Placement trait on each compute node provider whose host runs a
#: dcmigrate agent and this driver.
AGENT_TRAIT = "CUSTOM_DCMIGRATE_AGENT"

#: The ``[DEFAULT] compute_driver`` value that loads this driver through
#: the ``nova.virt.dcmigrate`` shim package.
COMPUTE_DRIVER = "dcmigrate.DCMigrateLibvirtDriver"


class DCMigrateLibvirtDriver(libvirt_driver.LibvirtDriver):
    """The stock libvirt driver plus the dcmigrate compute-side hooks."""

    def __init__(self, virtapi: Any, read_only: bool = False) -> None:
        """Create the driver exactly as ``LibvirtDriver`` does.

        :param virtapi: the ``nova.virt.virtapi.VirtAPI`` given by the
            compute manager.
        :param read_only: open a read-only libvirt connection.
        """
        super().__init__(virtapi, read_only=read_only)
        LOG.info("dcmigrate libvirt driver loaded; reporting trait "
                 "%(trait)s", {"trait": AGENT_TRAIT})

    def dcmigrate_traits(self) -> dict[str, bool]:
        """Return the dcmigrate traits this driver owns.

        Same shape as ``LibvirtDriver.static_traits``: a trait mapped to
        True is reported, one mapped to False is removed from the compute
        node provider.

        :returns: ``{trait name: supported}``.
        """
        # The agent's presence is not probed yet: installing this driver
        # means the host is set up for dcmigrate.
        return {AGENT_TRAIT: True}

    def update_provider_tree(
            self, provider_tree: nova_provider_tree.ProviderTree,
            nodename: str,
            allocations: dict[str, Any] | None = None) -> None:
        """Report the stock libvirt inventory and traits plus ours.

        :param provider_tree: the compute node's provider tree, as for
            ``ComputeDriver.update_provider_tree``.
        :param nodename: name of the compute node provider to update.
        :param allocations: allocations to edit on a reshape, or None.
        :raises ReshapeNeeded: from the stock driver, unchanged.
        """
        traits = self.dcmigrate_traits()
        # Applied before the stock code runs so that the copy of the tree
        # the stock driver keeps in self.provider_tree includes them too.
        provider_tree.add_traits(
            nodename, *(t for t, supported in traits.items() if supported))
        provider_tree.remove_traits(
            nodename, *(t for t, supported in traits.items() if not supported))
        super().update_provider_tree(
            provider_tree, nodename, allocations=allocations)
