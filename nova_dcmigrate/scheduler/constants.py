"""Names shared by the compute driver, the orchestration and the scheduler.

Nova-free, so that any layer can import it without pulling in Nova.
"""

from __future__ import annotations

#: Placement trait on each compute node provider whose host runs a
#: dcmigrate agent and DCMigrateLibvirtDriver. A redirect requires it on
#: the new destination (``root_required``).
AGENT_TRAIT = "CUSTOM_DCMIGRATE_AGENT"

#: Scheduler hint: hosts whose dcmigrate-agent still stores pages of the
#: migrating guest (see :mod:`nova_dcmigrate.scheduler.hints`).
HOLDERS_HINT = "dcmigrate_holders"

#: Scheduler hint: measured link rates from the migration source to
#: candidate hosts, as ``host=rate`` strings.
LINK_RATES_HINT = "dcmigrate_link_rates"
