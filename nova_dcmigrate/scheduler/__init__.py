"""The scheduler hook: choosing where a redirected live migration goes.

* :mod:`.repick` asks nova-scheduler for a new destination while a live
  migration is running (the redirect without a named host);
* :mod:`.weights` holds ``DCMigrateWeigher``, which nova-scheduler loads
  from ``[filter_scheduler] weight_classes``;
* :mod:`.hints` and :mod:`.scores` are the Nova-free halves of both: the
  scheduler-hint format the two sides share, and the weigher's arithmetic.

Only :mod:`.repick` and :mod:`.weights` import Nova.
"""
