"""DCMigrateWeigher: where a redirected live migration should go.

Enable it in nova-scheduler next to Nova's own weighers::

    [filter_scheduler]
    weight_classes = nova.scheduler.weights.all_weighers,
                     nova_dcmigrate.scheduler.weights.DCMigrateWeigher

Nova loads ``weight_classes`` by class path (``nova.loadables``), so no
entry point is involved there; the class is also registered under the
stevedore namespace ``nova_dcmigrate.scheduler.weights`` (name
``dcmigrate``) for tools that discover weighers by entry point.

It prefers hosts that still hold pages of the guest, hosts with a fast
measured link from the source, and lightly loaded hosts (see
:mod:`.scores`). Holders and link rates come from scheduler hints that
:mod:`.repick` sets (see :mod:`.hints`); without them only the load
component differs between hosts, so ordinary boots and migrations are
weighed on load alone.
"""

from __future__ import annotations

from typing import Any

from nova.scheduler import utils as scheduler_utils
from nova.scheduler import weights as nova_weights

from nova_dcmigrate import conf
from nova_dcmigrate.scheduler import constants
from nova_dcmigrate.scheduler import hints
from nova_dcmigrate.scheduler import scores

CONF = conf.CONF

#: Aggregate metadata keys that override the options per host, as Nova's
#: own ``*_weight_multiplier`` keys do.
AGGREGATE_KEYS = {
    "holder": "dcmigrate_holder_weight_multiplier",
    "link_rate": "dcmigrate_link_rate_weight_multiplier",
    "load": "dcmigrate_load_weight_multiplier",
}


def _hint(spec_obj: Any, name: str) -> object:
    # Raw value (a list of strings), not RequestSpec.get_scheduler_hint(),
    # which unwraps one-element lists.
    if (spec_obj is None
            or not spec_obj.obj_attr_is_set("scheduler_hints")
            or not spec_obj.scheduler_hints):
        return None
    return spec_obj.scheduler_hints.get(name)


class DCMigrateWeigher(nova_weights.BaseHostWeigher):  # type: ignore[misc]
    """Weigh hosts by held pages, link rate from the source, and load.

    The three components are combined here, each with its own multiplier,
    rather than by Nova's handler, which normalises one list per weigher
    to [0, 1] and applies one multiplier. ``minval = 0`` and ``maxval =
    1`` make that normalisation the identity, so a component with
    multiplier *m* adds between 0 and *m* to a host's weight, exactly as
    one of Nova's weighers with multiplier *m* would.
    """

    minval = 0.0
    maxval = 1.0

    def multipliers(self, host_state: Any) -> scores.Multipliers:
        """Return the multipliers for a host (options or aggregate keys).

        :param host_state: the ``nova.scheduler.host_manager.HostState``.
        """
        group = CONF.dcmigrate_scheduler
        return scores.Multipliers(
            holder=scheduler_utils.get_weight_multiplier(
                host_state, AGGREGATE_KEYS["holder"],
                group.holder_weight_multiplier),
            link_rate=scheduler_utils.get_weight_multiplier(
                host_state, AGGREGATE_KEYS["link_rate"],
                group.link_rate_weight_multiplier),
            load=scheduler_utils.get_weight_multiplier(
                host_state, AGGREGATE_KEYS["load"],
                group.load_weight_multiplier))

    def weigh_objects(self, weighed_obj_list: list[Any],
                      weight_properties: Any) -> list[float]:
        """Return one weight per host; Nova adds them to the host totals.

        All candidates are needed at once because the link-rate score is
        relative to the best measured candidate.

        :param weighed_obj_list: ``WeighedHost`` objects wrapping the
            candidates' ``HostState``.
        :param weight_properties: the request's ``RequestSpec``.
        :returns: the combined weight of each host, in order.
        """
        holders = hints.decode_holders(
            _hint(weight_properties, constants.HOLDERS_HINT))
        rates = hints.decode_link_rates(
            _hint(weight_properties, constants.LINK_RATES_HINT))
        host_states = [obj.obj for obj in weighed_obj_list]
        link_rates = scores.link_rate_scores(
            [hs.host for hs in host_states], rates)
        max_io_ops = CONF.filter_scheduler.max_io_ops_per_host
        weights = []
        for host_state, link_rate in zip(host_states, link_rates):
            load = scores.load_score(
                scores.HostLoad(
                    num_io_ops=host_state.num_io_ops,
                    vcpus_used=host_state.vcpus_used,
                    vcpus_total=host_state.vcpus_total,
                    cpu_allocation_ratio=host_state.cpu_allocation_ratio),
                max_io_ops)
            weights.append(scores.combine(
                scores.holder_score(host_state.host, holders), link_rate,
                load, self.multipliers(host_state)))
        return weights

    def _weigh_object(self, host_state: Any,
                      weight_properties: Any) -> float:
        """Weigh a single host (the abstract hook of ``BaseWeigher``).

        Nova calls :meth:`weigh_objects` instead; alone, a host is the best
        measured candidate for the link-rate score.
        """
        return self.weigh_objects(
            [nova_weights.WeighedHost(host_state, 0.0)],
            weight_properties)[0]
