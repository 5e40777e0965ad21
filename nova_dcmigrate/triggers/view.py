"""What triggers see of Nova: service state and the scheduler's answers.

Runs in the evaluation worker of the source nova-compute, through the
conductor (objects) and the scheduler RPC, like the redirect itself.
"""

from __future__ import annotations

from typing import Any

from nova import exception as nova_exception
from nova import objects
from nova import servicegroup
from oslo_log import log as logging

from nova_dcmigrate.scheduler import exception as scheduler_exception
from nova_dcmigrate.scheduler import repick
from nova_dcmigrate.triggers import base

LOG = logging.getLogger(__name__)


def destination_state(context: Any, host: str,
                      servicegroup_api: Any = None
                      ) -> base.DestinationState | None:
    """Return the nova-compute service state of ``host``; None when it
    cannot be read (no such service, conductor unreachable)."""
    try:
        service = objects.Service.get_by_compute_host(context, host)
        api = servicegroup_api or servicegroup.API()
        up = bool(api.service_is_up(service))
    except nova_exception.ComputeHostNotFound:
        return None
    except Exception as err:
        LOG.warning("Reading the service state of %(host)s failed: "
                    "%(err)s", {"host": host, "err": err})
        return None
    return base.DestinationState(
        host=host, disabled=bool(service.disabled),
        disabled_reason=service.disabled_reason, up=up,
        forced_down=bool(service.forced_down))


class NovaSchedulerView:
    """:class:`~.base.SchedulerView` through nova-scheduler; each answer
    is asked once per evaluation and kept."""

    _UNSET = object()

    def __init__(self, context: Any, instance: Any, run: Any,
                 report_client: Any, require_agent: bool) -> None:
        self._context = context
        self._instance = instance
        self._run = run
        self._report_client = report_client
        self._require_agent = require_agent
        self._fits: Any = self._UNSET
        self._alt: Any = self._UNSET

    def _spec(self) -> Any:
        return objects.RequestSpec.get_by_instance_uuid(
            self._context, self._instance.uuid)

    def destination_fits(self) -> bool:
        if self._fits is self._UNSET:
            run = self._run
            migration = run.migration
            try:
                self._fits = repick.destination_passes(
                    self._context, self._instance, self._spec(), migration,
                    run.dest, migration.dest_node,
                    require_agent=self._require_agent)
            except Exception as err:
                raise base.SchedulerViewError(
                    question="whether %s still fits" % run.dest,
                    reason=str(err) or type(err).__name__) from err
        return bool(self._fits)

    def alternative(self) -> base.Alternative | None:
        if self._alt is self._UNSET:
            run = self._run
            try:
                target = repick.schedule_redirect(
                    self._context, self._instance, self._spec(),
                    run.migration, exclude_hosts=set(run.destinations),
                    keep_claim=False, holders=list(run.destinations),
                    report_client=self._report_client,
                    require_agent=self._require_agent)
            except scheduler_exception.NoValidRedirectTarget:
                self._alt = None
            except Exception as err:
                raise base.SchedulerViewError(
                    question="where a redirect would go",
                    reason=str(err) or type(err).__name__) from err
            else:
                self._alt = base.Alternative(host=target.host)
        return self._alt  # type: ignore[no-any-return]
