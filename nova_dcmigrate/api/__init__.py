"""dcmigrate-api: the redirect REST API (Flask, WSGI).

:mod:`.app` builds the WSGI application, :mod:`.service` does each
request, :mod:`.nova` finds servers and migrations through Nova's API,
:mod:`.compute_rpc` calls the source compute, :mod:`.store` keeps the
records seen. Contract: ``doc/source/api-ref.rst``.
"""
