"""OpenStackClient plugin: ``openstack server migration redirect ...``.

The modules here are loaded only by the ``openstack`` command (entry
points ``openstack.cli.extension``, ``openstack.dcmigrate.v1`` and the
cliff hook group ``openstack.cli.server_migrate``), so they may import
osc-lib and cliff, which are not runtime requirements of the service.
"""
