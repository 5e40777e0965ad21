"""Tempest options of the nova-dcmigrate plugin."""

from oslo_config import cfg

service_option = cfg.BoolOpt(
    "dcmigrate", default=False,
    help="Whether nova-dcmigrate's agents run on the compute hosts.")
