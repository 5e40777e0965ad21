"""``nova.virt.dcmigrate``: makes DCMigrateLibvirtDriver loadable by Nova.

nova-compute imports ``'nova.virt.' + [DEFAULT] compute_driver`` and nothing
else (``nova.virt.driver.load_compute_driver``), so out-of-tree drivers ship a
package inside the ``nova.virt`` namespace, as nova-lxd (``nova/virt/lxd``)
and compute-hyperv (``nova/virt/compute_hyperv``) did. With this package
installed, operators set::

    [DEFAULT]
    compute_driver = dcmigrate.DCMigrateLibvirtDriver

This file is the exact content meant to be installed as
``nova/virt/dcmigrate/__init__.py``; until the packaging ships it, the
nova-functional tests put this directory on ``nova.virt.__path__``.
"""

from nova_dcmigrate.virt.libvirt import driver

DCMigrateLibvirtDriver = driver.DCMigrateLibvirtDriver
