"""``nova_dcmigrate.wsgi.api:application``: dcmigrate-api under a WSGI
server, e.g. ``uwsgi --module nova_dcmigrate.wsgi.api:application`` or
``gunicorn nova_dcmigrate.wsgi.api:application``.

The configuration file is ``/etc/nova-dcmigrate/dcmigrate-api.conf``, or
the file(s) named in ``DCMIGRATE_API_CONFIG`` (comma-separated).
"""

from __future__ import annotations

import os

from oslo_log import log as logging

from nova_dcmigrate.api import app as api_app

CONFIG_ENV = "DCMIGRATE_API_CONFIG"
DEFAULT_CONFIG = "/etc/nova-dcmigrate/dcmigrate-api.conf"


def init_application() -> api_app.WSGIApp:
    files = [f for f in os.environ.get(CONFIG_ENV, DEFAULT_CONFIG)
             .split(",") if f and os.path.exists(f)]
    conf = api_app.new_conf(default_config_files=files)
    logging.setup(conf, "dcmigrate-api")
    return api_app.create_app(conf)


application = init_application()
