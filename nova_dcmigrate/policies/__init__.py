"""Policy rules of dcmigrate-api, in code (oslo.policy).

Entry points: ``oslo.policy.policies`` (``nova_dcmigrate =
nova_dcmigrate.policies:list_rules``, for ``oslopolicy-sample-generator``
with ``etc/nova-dcmigrate/dcmigrate-policy-generator.conf``) and
``oslo.policy.enforcer`` (:func:`get_enforcer`, for
``oslopolicy-policy-generator`` and ``oslopolicy-checker``).
"""

from __future__ import annotations

from oslo_config import cfg
from oslo_policy import policy

from nova_dcmigrate.policies import base
from nova_dcmigrate.policies import redirect


def list_rules() -> list[policy.RuleDefault]:
    return [*base.list_rules(), *redirect.list_rules()]


def make_enforcer(conf: cfg.ConfigOpts) -> policy.Enforcer:
    """An enforcer on ``conf`` with every rule registered."""
    enforcer = policy.Enforcer(conf)
    enforcer.register_defaults(list_rules())
    return enforcer


def get_enforcer() -> policy.Enforcer:
    """For the oslo.policy command line tools (global config)."""
    conf = cfg.CONF
    conf([], project="nova-dcmigrate")
    return make_enforcer(conf)
