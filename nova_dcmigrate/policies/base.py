"""Rules shared by the redirect rules, as Nova's own base rules."""

from __future__ import annotations

from oslo_policy import policy

ADMIN = "rule:context_is_admin"
PROJECT_READER = "role:reader and project_id:%(project_id)s"
ADMIN_OR_PROJECT_READER = "rule:context_is_admin or (%s)" % PROJECT_READER

RULES = [
    policy.RuleDefault(
        "context_is_admin", "role:admin",
        description="Decides what an administrator is."),
]


def list_rules() -> list[policy.RuleDefault]:
    return list(RULES)
