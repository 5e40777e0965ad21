"""Triggers about the destination host itself."""

from __future__ import annotations

from nova_dcmigrate.triggers import base


class DestinationDisabled(base.RedirectTrigger):
    """Fires when the destination's nova-compute service is disabled (an
    operator starts draining it) or, with ``[dcmigrate_auto]
    destination_disabled_when_down``, reported down."""

    name = "destination_disabled"

    def evaluate(self, inputs: base.Inputs) -> base.Decision | None:
        dest = inputs.destination
        if dest is None:
            raise base.TriggerInputError(
                trigger=self.name,
                reason="the destination's service state is unknown")
        if dest.host != inputs.dest:
            raise base.TriggerInputError(
                trigger=self.name,
                reason="service state of %s given for destination %s"
                       % (dest.host, inputs.dest))
        if dest.disabled:
            why = "disabled"
        elif self.conf.destination_disabled_when_down and (
                not dest.up or dest.forced_down):
            why = "down"
        else:
            return None
        summary = "nova-compute on destination %s is %s" % (dest.host, why)
        if dest.disabled and dest.disabled_reason:
            summary += " (%s)" % dest.disabled_reason
        return base.Decision.redirect_to_repick(
            self.name, summary,
            {"destination": dest.host, "state": why,
             "disabled_reason": dest.disabled_reason, "up": dest.up,
             "forced_down": dest.forced_down})


class DestinationUnfit(base.RedirectTrigger):
    """Fires when the destination no longer passes nova-scheduler's
    filters for the instance's request spec (resources taken by other
    claims, an aggregate or trait changed), ``[dcmigrate_auto]
    destination_unfit_confirmations`` evaluations in a row."""

    name = "destination_unfit"

    def evaluate(self, inputs: base.Inputs) -> base.Decision | None:
        memo = inputs.state(self.name)
        if inputs.scheduler.destination_fits():
            memo["unfit"] = 0
            return None
        memo["unfit"] = memo.get("unfit", 0) + 1
        needed = self.conf.destination_unfit_confirmations
        if memo["unfit"] < needed:
            return None
        return base.Decision.redirect_to_repick(
            self.name,
            "destination %s no longer passes the scheduler's filters for "
            "this instance (%d checks in a row)"
            % (inputs.dest, memo["unfit"]),
            {"destination": inputs.dest, "failed_checks": memo["unfit"]})
