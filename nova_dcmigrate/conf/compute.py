"""Options of the compute side of redirects (group ``[dcmigrate_compute]``).

Read by ``DCMigrateLibvirtDriver`` inside nova-compute (the source of a
live migration runs the redirect) and by the redirect RPC client
(``nova_dcmigrate.compute.rpcapi``) wherever it runs.
"""

from __future__ import annotations

from oslo_config import cfg

from nova_dcmigrate.conf import groups

GROUP = cfg.OptGroup(
    "dcmigrate_compute",
    title="dcmigrate compute options",
    help="How nova-compute services running DCMigrateLibvirtDriver "
         "redirect running live migrations.")

OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "rpc_version_cap",
        help="Highest version of the dcmigrate_compute RPC API that the "
             "redirect client sends, e.g. '1.0'. Leave unset to send the "
             "newest version; set it to the oldest version any "
             "nova-compute runs while a rolling upgrade is under way.\n\n"
             "Services that use this: whatever sends redirects (the "
             "redirect API service, tests).\n\n"
             "Related options: none."),
    cfg.IntOpt(
        "attempt_stop_timeout",
        default=60,
        min=1,
        help="Seconds the source waits, after aborting the libvirt job to "
             "the old destination for a redirect, for that migration "
             "attempt to end before it gives up on the redirect and rolls "
             "the migration back to the source.\n\n"
             "Services that use this: nova-compute (migration source).\n\n"
             "Related options: none."),
    cfg.IntOpt(
        "finished_status_entries",
        default=100,
        min=0,
        help="How many finished live migrations a nova-compute keeps the "
             "redirect status of (get_redirect_status), oldest dropped "
             "first.\n\n"
             "Services that use this: nova-compute (migration source).\n\n"
             "Related options: none."),
    cfg.StrOpt(
        "transport",
        default="agents",
        choices=[
            ("agents", "the migration stream goes through the dcmigrate "
                       "agents of the source and destination hosts; a "
                       "redirect reuses the pages earlier destinations "
                       "received"),
            ("direct", "Nova's stock job, straight from QEMU to QEMU; a "
                       "redirect resends the whole memory"),
        ],
        help="What carries the memory of a live migration this host runs "
             "as the source. With 'agents', every host needs a running "
             "dcmigrate-agent (RPC server name = the compute's host name) "
             "and live migrations that would use post-copy, parallel "
             "connections, native TLS or tunnelling are refused at the "
             "source pre-check.\n\n"
             "Services that use this: nova-compute (migration source).\n\n"
             "Related options: agent_transport_url, agent_addresses, "
             "[libvirt] live_migration_permit_post_copy, "
             "live_migration_parallel_connections, "
             "live_migration_with_native_tls, live_migration_tunnelled."),
    cfg.StrOpt(
        "agent_transport_url",
        secret=True,
        help="oslo.messaging URL of the bus the dcmigrate agents serve "
             "RPC on. Unset: [DEFAULT] transport_url, the bus nova-compute "
             "uses (the agent reads it from its own configuration file).\n\n"
             "Services that use this: nova-compute (migration source).\n\n"
             "Related options: transport."),
    cfg.IntOpt(
        "agent_rpc_timeout",
        default=60,
        min=1,
        help="Seconds to wait for a dcmigrate agent's answer (prepare, "
             "abort, cleanup, status).\n\n"
             "Services that use this: nova-compute (migration source).\n\n"
             "Related options: transport."),
    cfg.IntOpt(
        "agent_ping_timeout",
        default=5,
        min=1,
        help="Seconds to wait for a dcmigrate agent's answer to a ping: "
             "the local agent's, checked for the placement trait "
             "CUSTOM_DCMIGRATE_AGENT from the resource tracker's updates "
             "(which it must not hold up long), and a redirect's new "
             "destination's, checked before the running attempt is "
             "stopped.\n\n"
             "Services that use this: nova-compute.\n\n"
             "Related options: transport, agent_check_interval."),
    cfg.IntOpt(
        "agent_check_interval",
        default=60,
        min=0,
        help="Seconds the answer (or silence) of the local dcmigrate "
             "agent to a ping is trusted before it is pinged again to "
             "decide whether the compute node reports the placement trait "
             "CUSTOM_DCMIGRATE_AGENT. The trait is reported only with "
             "transport = agents and while the agent answers; 0 pings at "
             "every provider tree update.\n\n"
             "Services that use this: nova-compute.\n\n"
             "Related options: transport, agent_ping_timeout."),
    cfg.DictOpt(
        "agent_addresses",
        default={},
        help="IP address of each host's dcmigrate agent peer listener, as "
             "host:address pairs, e.g. 'cmp1:10.1.0.11,cmp2:10.1.0.12'. A "
             "host not listed is reached at its [libvirt] "
             "live_migration_inbound_addr (sent with the live migration "
             "data), else at its host name resolved by DNS. The port is "
             "the one the agent reports (its [dcmigrate_agent] "
             "peer_port).\n\n"
             "Services that use this: nova-compute (migration source).\n\n"
             "Related options: transport."),
    cfg.StrOpt(
        "memory_backing",
        default="memfd",
        choices=[
            ("memfd", "new guests' RAM is a shared memfd"),
            ("file", "guests' RAM is a shared file in libvirt's "
                     "memory_backing_dir (must be a tmpfs); also applied to "
                     "running guests when they migrate"),
            ("anonymous", "guest RAM is left as Nova makes it"),
        ],
        help="How guest RAM is backed so that the destination's dcmigrate "
             "agent can hold it instead of copying every page it forwards "
             "(a plain migration then costs the destination no second "
             "copy of the guest's RAM). Applied when Nova builds a "
             "domain's XML (boot, hard reboot, rebuild, cold migration); "
             "guests with huge pages or [libvirt] file_backed_memory keep "
             "Nova's backing. Guests booted without shared RAM still "
             "migrate; their destination agent copies pages, up to its "
             "[dcmigrate_agent] copy_store_max_mib. Shared guest RAM is "
             "not merged by KSM and uses transparent huge pages only with "
             "shmem_enabled.\n\n"
             "Services that use this: nova-compute.\n\n"
             "Related options: [dcmigrate_agent] hold_qemu_ram, "
             "copy_store_max_mib."),
    cfg.PortOpt(
        "agent_port_min",
        default=49152,
        help="Lowest loopback port used between QEMU and the dcmigrate "
             "agents (the port must be free on both hosts; a new one is "
             "picked for each attempt).\n\n"
             "Services that use this: nova-compute (migration source).\n\n"
             "Related options: agent_port_max."),
    cfg.PortOpt(
        "agent_port_max",
        default=49215,
        help="Highest loopback port used between QEMU and the dcmigrate "
             "agents.\n\n"
             "Services that use this: nova-compute (migration source).\n\n"
             "Related options: agent_port_min."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register ``[dcmigrate_compute]`` on ``conf``."""
    groups.register(conf, GROUP, OPTS)


def list_opts() -> dict[cfg.OptGroup, list[cfg.Opt]]:
    """Return the options for oslo-config-generator."""
    return {GROUP: OPTS}
