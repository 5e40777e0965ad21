"""Who may redirect a live migration and read redirect records.

Defaults follow Nova's live-migration rules: only an administrator starts
one (``os_compute_api:os-migrate-server:migrate_live``), an administrator
or a reader of the server's project reads in-progress migrations.
"""

from __future__ import annotations

from oslo_policy import policy

from nova_dcmigrate.policies import base

PREFIX = "dcmigrate:redirect:%s"
CREATE = PREFIX % "create"
LIST = PREFIX % "list"
SHOW = PREFIX % "show"
PATH = "/v1/servers/{server_id}/redirects"

RULES = [
    policy.DocumentedRuleDefault(
        name=CREATE, check_str=base.ADMIN,
        description="Redirect a server's running live migration to "
                    "another host (named, or picked by nova-scheduler).",
        operations=[{"method": "POST", "path": PATH}],
        scope_types=["project"]),
    policy.DocumentedRuleDefault(
        name=LIST, check_str=base.ADMIN_OR_PROJECT_READER,
        description="List the redirects of a server's live migrations.",
        operations=[{"method": "GET", "path": PATH}],
        scope_types=["project"]),
    policy.DocumentedRuleDefault(
        name=SHOW, check_str=base.ADMIN_OR_PROJECT_READER,
        description="Show one redirect of a server, with its live "
                    "progress.",
        operations=[{"method": "GET", "path": PATH + "/{redirect_id}"}],
        scope_types=["project"]),
]


def list_rules() -> list[policy.RuleDefault]:
    return list(RULES)
