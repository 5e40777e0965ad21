"""Redirect a server's running live migration over the compute RPC.

``python -m nova_dcmigrate.lab.cloud.rpc_redirect <nova.conf> <server>
[<host>]``: the lab cloud's RAM check uses it where tempest uses the
redirect API (it needs no API service, only the control plane's
nova.conf).  Prints the redirect status as JSON lines, the last one the
final status.
"""

from __future__ import annotations

import json
import sys
import time

# Before nova.rpc.init creates the transport (see register_exception_modules).
from nova_dcmigrate.compute import rpcapi

FINAL = ("completed", "failed", "rolled-back", "aborted", "error")


def main() -> int:
    conf_file, server = sys.argv[1], sys.argv[2]
    host = sys.argv[3] if len(sys.argv) > 3 else None
    rpcapi.register_exception_modules()
    from nova import config
    from nova import context
    from nova import objects
    config.parse_args(["rpc_redirect", "--config-file", conf_file])
    objects.register_all()
    ctxt = context.get_admin_context()
    instance = objects.Instance.get_by_uuid(ctxt, server)
    migrations = objects.MigrationList.get_by_filters(
        ctxt, {"instance_uuid": server, "migration_type": "live-migration",
               "status": "running"})
    if not migrations:
        print(json.dumps({"error": "no running live migration"}))
        return 2
    migration = migrations[0]
    client = rpcapi.ComputeRedirectAPI()
    status = client.redirect_live_migration(ctxt, instance, migration,
                                            host=host)
    print(json.dumps(status, default=str), flush=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        time.sleep(1)
        status = client.get_redirect_status(ctxt, instance, migration)
        if status.get("state") in FINAL:
            break
    print(json.dumps(status, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
