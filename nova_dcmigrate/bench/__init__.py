"""dcmigrate-bench: redirect a live migration on the lab and measure it.

The same engine serves the newcomer's demo (``make demo``) and the
benchmark: a fresh guest is booted on lab host ``src`` for every method and
repeat, migrated towards ``old``, redirected to ``new`` (and further hosts)
at given fractions of the first attempt's progress, and the result is
checked byte for byte.  Modules, one concept each:

``options``   command line and the validated :class:`BenchConfig`
``bound``     lower bound, link utilisation, medians, ratios (pure maths)
``counters``  what the agents' status says about one migration
``linkstats`` per-host interface byte counters, sampled while runs go
``methods``   dcmigrate, relay-only, restart and direct migrations
``progress``  live display (rich on a terminal, log lines otherwise)
``runner``    lab, agents, guests, calibration and the run loop
``report``    JSON records, medians, ratios and the terminal table
``plot``      the PNG: link throughput over time and post-redirect bars
"""
