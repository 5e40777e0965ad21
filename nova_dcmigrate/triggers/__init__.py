"""Automatic redirects: triggers that decide a running migration's
destination stopped being a good choice.

:mod:`.base` is the plugin interface, :mod:`.destination` and
:mod:`.too_slow` the shipped triggers, :mod:`.progress` the rate and
projection arithmetic, :mod:`.monitor` runs them in nova-compute,
:mod:`.view` answers their questions through Nova, :mod:`.report` makes
every decision visible. The operator page is ``doc/source/triggers.rst``.
"""
