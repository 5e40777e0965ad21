"""``dcmigrate-api``: the redirect REST API on a development server.

For a lab or a developer's machine (werkzeug's threaded server on
``[api] bind_host``:``port``). Deployments run the WSGI module
``nova_dcmigrate.wsgi.api:application`` under uwsgi or gunicorn.
"""

from __future__ import annotations

import sys

from oslo_log import log as logging
from werkzeug import serving

from nova_dcmigrate.api import app as api_app


def main(argv: list[str] | None = None) -> int:
    conf = api_app.new_conf(sys.argv[1:] if argv is None else argv)
    logging.setup(conf, "dcmigrate-api")
    try:
        application = api_app.create_app(conf)
    except api_app.NoauthRefused as err:
        print("dcmigrate-api: %s" % err, file=sys.stderr)
        return 2
    serving.run_simple(conf.api.bind_host, conf.api.port, application,
                       threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
