"""A real OpenStack cloud on the lab (``dcmigrate-lab cloud``).

Control plane (MariaDB, RabbitMQ, Keystone, Placement, Glance, Nova API,
conductor and scheduler) as processes in the root namespace, bound to the
lab bridge's address; three lab hosts each with its own libvirtd,
nova-compute running ``DCMigrateLibvirtDriver`` and a dcmigrate-agent.
See doc/source/lab-cloud.rst.
"""
