"""Compute side of redirects: RPC endpoint, RPC client, orchestration.

Every nova-compute running ``DCMigrateLibvirtDriver`` serves the
``dcmigrate_compute`` RPC namespace (:mod:`.manager`) next to Nova's own
compute API; the source of a live migration acts on a redirect request
(:mod:`.redirect`) and the client (:mod:`.rpcapi`) sends requests to it.
"""
