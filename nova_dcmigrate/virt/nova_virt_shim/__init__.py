"""``nova.virt.dcmigrate``: makes DCMigrateLibvirtDriver loadable by Nova.

nova-compute imports ``'nova.virt.' + [DEFAULT] compute_driver`` and nothing
else (``nova.virt.driver.load_compute_driver``), so out-of-tree drivers ship a
package inside the ``nova.virt`` namespace, as nova-lxd (``nova/virt/lxd``)
and compute-hyperv (``nova/virt/compute_hyperv``) did. With nova-dcmigrate's
wheel installed next to nova, operators set::

    [DEFAULT]
    compute_driver = dcmigrate.DCMigrateLibvirtDriver

This file is the source of ``nova/virt/dcmigrate/__init__.py`` in the wheel
(``setup.py``'s ``build_py``); it only re-exports the driver class.
"""

from nova_dcmigrate.virt.libvirt import driver

DCMigrateLibvirtDriver = driver.DCMigrateLibvirtDriver
