"""Options of the dcmigrate-api service.

Groups ``[api]`` (the service), ``[database]`` (its record store),
``[nova]`` (how it reaches Nova's API) and ``[service_user]`` (the service
token it sends with the caller's token, as Nova does). The service builds
its own ``ConfigOpts`` (:func:`register_opts`), never Nova's: in a process
that also loads Nova (tests) Nova's ``[database]`` would clash.
"""

from __future__ import annotations

from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

from nova_dcmigrate.conf import compute
from nova_dcmigrate.conf import groups

API_GROUP = cfg.OptGroup(
    "api", title="dcmigrate-api options",
    help="The redirect REST API service (dcmigrate-api).")

API_OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "auth_strategy",
        default="keystone",
        choices=[("keystone", "validate tokens with keystonemiddleware "
                              "auth_token ([keystone_authtoken])"),
                 ("noauth", "trust the X-User-Id, X-Project-Id and "
                            "X-Roles headers; lab and tests only, and "
                            "refused unless allow_noauth is true")],
        help="How requests are authenticated.\n\n"
             "Services that use this: dcmigrate-api.\n\n"
             "Related options: allow_noauth."),
    cfg.BoolOpt(
        "allow_noauth",
        default=False,
        help="Must be true for auth_strategy = noauth to start: anyone "
             "who reaches the port can then act as any user, admin "
             "included. Never set this outside a lab.\n\n"
             "Services that use this: dcmigrate-api.\n\n"
             "Related options: auth_strategy."),
    cfg.HostAddressOpt(
        "bind_host",
        default="127.0.0.1",
        help="Address the development server (the dcmigrate-api console "
             "script) listens on. Production deployments run the WSGI "
             "module nova_dcmigrate.wsgi.api:application under uwsgi or "
             "gunicorn instead.\n\n"
             "Services that use this: dcmigrate-api.\n\n"
             "Related options: port."),
    cfg.PortOpt(
        "port",
        default=8790,
        help="Port of the development server.\n\n"
             "Services that use this: dcmigrate-api.\n\n"
             "Related options: bind_host."),
    cfg.IntOpt(
        "compute_rpc_timeout",
        default=30,
        min=1,
        help="Seconds to wait for a source nova-compute to answer a "
             "redirect or list request before answering 503.\n\n"
             "Services that use this: dcmigrate-api.\n\n"
             "Related options: [DEFAULT] transport_url."),
    cfg.StrOpt(
        "nova_microversion",
        default="2.59",
        help="Compute API microversion used to find a server's running "
             "live migration (server migrations, >= 2.23; 2.59 adds the "
             "migration UUIDs the compute RPC needs).\n\n"
             "Services that use this: dcmigrate-api.\n\n"
             "Related options: [nova]."),
]

DATABASE_GROUP = cfg.OptGroup(
    "database", title="dcmigrate-api record store",
    help="Where dcmigrate-api keeps the redirect records it has seen, so "
         "that finished redirects stay listed after a nova-compute "
         "restart.")

DATABASE_OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "connection",
        secret=True,
        help="SQLAlchemy URL of the record store, e.g. "
             "mysql+pymysql://dcmigrate:<password>@db/dcmigrate. Unset: "
             "sqlite file dcmigrate-api.sqlite under [DEFAULT] "
             "state_path. Tables are created on start.\n\n"
             "Services that use this: dcmigrate-api.\n\n"
             "Related options: [DEFAULT] state_path."),
]

DEFAULT_OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "state_path",
        default="/var/lib/nova-dcmigrate",
        help="Directory of the service's state (the default sqlite record "
             "store).\n\n"
             "Services that use this: dcmigrate-api.\n\n"
             "Related options: [database] connection."),
]

NOVA_GROUP = cfg.OptGroup(
    "nova", title="Nova API access",
    help="How dcmigrate-api reaches Nova's compute API (keystoneauth "
         "session and adapter options, as Nova's own [neutron] group). "
         "Requests carry the caller's token, plus a service token when "
         "[service_user] send_service_user_token is true.")

SERVICE_USER_GROUP = cfg.OptGroup(
    "service_user", title="Service user",
    help="Credentials of the dcmigrate service user, whose token is sent "
         "as X-Service-Token with the caller's token (keystoneauth "
         "service_token), as Nova's [service_user].")

SERVICE_USER_OPTS: list[cfg.Opt] = [
    cfg.BoolOpt(
        "send_service_user_token",
        default=False,
        help="Send a service token with every request to Nova, so that "
             "a user token that expires while a request is on its way is "
             "still accepted.\n\n"
             "Services that use this: dcmigrate-api.\n\n"
             "Related options: the keystoneauth auth options of this "
             "group."),
]


def _nova_opts() -> list[cfg.Opt]:
    opts = (ks_loading.get_session_conf_options() +
            ks_loading.get_adapter_conf_options(include_deprecated=False))
    return [o for o in opts if o.dest not in ("service_type", "version",
                                              "min_version",
                                              "max_version")]


def _service_user_opts() -> list[cfg.Opt]:
    return (SERVICE_USER_OPTS + ks_loading.get_session_conf_options() +
            ks_loading.get_auth_common_conf_options() +
            ks_loading.get_auth_plugin_conf_options("password"))


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register everything dcmigrate-api reads on ``conf``."""
    conf.register_opts(DEFAULT_OPTS)
    groups.register(conf, API_GROUP, API_OPTS)
    groups.register(conf, DATABASE_GROUP, DATABASE_OPTS)
    groups.register(conf, NOVA_GROUP, _nova_opts())
    groups.register(conf, SERVICE_USER_GROUP, SERVICE_USER_OPTS)
    ks_loading.register_session_conf_options(conf, SERVICE_USER_GROUP.name)
    ks_loading.register_auth_conf_options(conf, SERVICE_USER_GROUP.name)
    conf.set_default("valid_interfaces", ["internal", "public"],
                     group=NOVA_GROUP.name)
    # rpc_version_cap of the compute RPC client.
    compute.register_opts(conf)


def list_opts() -> dict[cfg.OptGroup | str, list[cfg.Opt]]:
    """Return the options for oslo-config-generator."""
    return {"DEFAULT": DEFAULT_OPTS, API_GROUP: API_OPTS,
            DATABASE_GROUP: DATABASE_OPTS, NOVA_GROUP: _nova_opts(),
            SERVICE_USER_GROUP: _service_user_opts(),
            compute.GROUP: [o for o in compute.OPTS
                            if o.name == "rpc_version_cap"]}
