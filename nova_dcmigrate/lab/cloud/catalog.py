"""Keystone catalog helpers run as ``python -m`` (one process per call).

``bootstrap`` makes the service project, users, services and endpoints in
one process (11 OSC calls take ~1 min here); ``service`` and ``endpoint``
are the devstack stand-ins' get_or_create_service/get_or_create_endpoint.
Credentials come from the OS_* environment (an admin openrc).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import openstack


def _conn() -> Any:
    return openstack.connect(
        auth_url=os.environ["OS_AUTH_URL"],
        username=os.environ["OS_USERNAME"],
        password=os.environ["OS_PASSWORD"],
        project_name=os.environ["OS_PROJECT_NAME"],
        user_domain_id="default", project_domain_id="default",
        region_name=os.environ.get("OS_REGION_NAME", "RegionOne"),
        interface="public")


def _service(conn: Any, name: str, type_: str, description: str) -> Any:
    for svc in conn.identity.services():
        if svc.type == type_:
            return svc
    return conn.identity.create_service(name=name, type=type_,
                                        description=description)


def _endpoint(conn: Any, service: Any, region: str, url: str) -> None:
    have = {e.interface for e in conn.identity.endpoints(
        service_id=service.id)}
    for interface in ("public", "internal", "admin"):
        if interface not in have:
            conn.identity.create_endpoint(service_id=service.id,
                                          interface=interface, url=url,
                                          region_id=region)


def bootstrap(spec: dict[str, Any]) -> None:
    """spec: {"password": ..., "users": [...], "services":
    [[name, type, url], ...]}"""
    conn = _conn()
    project = conn.identity.find_project("service") or \
        conn.identity.create_project(name="service", domain_id="default")
    # "service": keystonemiddleware requires it in service tokens
    # (service_token_roles_required defaults to True).
    roles = [conn.identity.find_role(name) for name in ("admin", "service")]
    for name in spec["users"]:
        user = conn.identity.find_user(name) or conn.identity.create_user(
            name=name, password=spec["password"], domain_id="default",
            default_project_id=project.id)
        for role in roles:
            conn.identity.assign_project_role_to_user(project, user, role)
    for name, type_, url in spec["services"]:
        svc = _service(conn, name, type_, name)
        _endpoint(conn, svc, "RegionOne", url)


def main() -> None:
    cmd = sys.argv[1]
    if cmd == "bootstrap":
        bootstrap(json.loads(sys.argv[2]))
    elif cmd == "user":
        conn = _conn()
        project = conn.identity.find_project("service")
        user = conn.identity.find_user(sys.argv[2]) or \
            conn.identity.create_user(name=sys.argv[2],
                                      password=sys.argv[3],
                                      domain_id="default",
                                      default_project_id=project.id)
        role = conn.identity.find_role(sys.argv[4])
        conn.identity.assign_project_role_to_user(project, user, role)
    elif cmd == "service":
        _service(_conn(), sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "endpoint":
        conn = _conn()
        svc = next(s for s in conn.identity.services()
                   if s.name == sys.argv[2] or s.type == sys.argv[2])
        _endpoint(conn, svc, sys.argv[3], sys.argv[4])


if __name__ == "__main__":
    main()
