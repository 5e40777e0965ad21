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
    cfg.StrOpt(
        "state_dir",
        default=None,
        help="Directory where nova-compute keeps one small JSON record per "
             "live migration it redirects as the source (hosts involved, "
             "migration id, clean-up still to do), so that a restarted "
             "nova-compute finishes or undoes an interrupted redirect. "
             "Default: ``dcmigrate/runs`` under Nova's ``[DEFAULT] "
             "state_path``. Must be local to the host.\n\n"
             "Services that use this: nova-compute (migration source).\n\n"
             "Related options: run_record_max_bytes."),
    cfg.IntOpt(
        "run_record_max_bytes",
        default=262144,
        min=4096,
        help="Largest size of one persisted redirect record. A record "
             "that would be larger (a pathological number of volumes or "
             "ports) is not written; an ERROR says that a restart in the "
             "middle of that redirect will need a manual clean-up.\n\n"
             "Services that use this: nova-compute (migration source).\n\n"
             "Related options: state_dir."),
    cfg.IntOpt(
        "finished_status_entries",
        default=100,
        min=0,
        help="How many finished live migrations a nova-compute keeps the "
             "redirect status of (get_redirect_status), oldest dropped "
             "first.\n\n"
             "Services that use this: nova-compute (migration source).\n\n"
             "Related options: none."),
    cfg.IntOpt(
        "redirect_history_per_instance",
        default=20,
        min=1,
        help="How many redirect records (list_redirects, the redirect "
             "REST API) a nova-compute keeps per instance it ran live "
             "migrations of as the source, oldest dropped first. The "
             "records live in memory: a restart of nova-compute forgets "
             "them (the dcmigrate-api service keeps its own copy).\n\n"
             "Services that use this: nova-compute (migration source).\n\n"
             "Related options: redirect_history_instances."),
    cfg.IntOpt(
        "redirect_history_instances",
        default=1000,
        min=1,
        help="How many instances a nova-compute keeps redirect records "
             "of; the instance whose records were touched longest ago is "
             "dropped first.\n\n"
             "Services that use this: nova-compute (migration source).\n\n"
             "Related options: redirect_history_per_instance."),
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
        deprecated_for_removal=True,
        deprecated_reason="QEMU and the agents meet on UNIX sockets "
                          "([dcmigrate_agent] socket_dir); no loopback port "
                          "is used any more.",
        help="Unused. Lowest loopback port once used between QEMU and "
             "the dcmigrate agents.\n\n"
             "Services that use this: nova-compute (migration source).\n\n"
             "Related options: agent_port_max."),
    cfg.PortOpt(
        "agent_port_max",
        default=49215,
        deprecated_for_removal=True,
        deprecated_reason="QEMU and the agents meet on UNIX sockets "
                          "([dcmigrate_agent] socket_dir); no loopback port "
                          "is used any more.",
        help="Unused. Highest loopback port used between QEMU and the "
             "dcmigrate agents.\n\n"
             "Services that use this: nova-compute (migration source).\n\n"
             "Related options: agent_port_min."),
    cfg.IntOpt(
        "housekeeping_interval",
        default=30,
        min=1,
        help="Seconds between two runs of the driver's background "
             "housekeeping: refreshing whether the local dcmigrate agent "
             "answers (for the placement trait; never done inside the "
             "resource tracker's provider tree update) and retrying "
             "failed clean-up steps of redirects.\n\n"
             "Services that use this: nova-compute.\n\n"
             "Related options: agent_check_interval, "
             "cleanup_retry_interval."),
    cfg.IntOpt(
        "cleanup_retries",
        default=10,
        min=0,
        help="How many more times a failed clean-up step of a redirect "
             "(releasing the old destination's volume attachments, "
             "domain, port bindings, claims or placement allocation) is "
             "retried before an ERROR asks the operator to finish it by "
             "hand. Each failure is logged at ERROR and listed in the "
             "redirect status (cleanup_pending).\n\n"
             "Services that use this: nova-compute (migration source).\n\n"
             "Related options: cleanup_retry_interval."),
    cfg.IntOpt(
        "cleanup_retry_interval",
        default=60,
        min=1,
        help="Seconds between two tries of a failed redirect clean-up "
             "step.\n\n"
             "Services that use this: nova-compute (migration source).\n\n"
             "Related options: cleanup_retries, housekeeping_interval."),
    cfg.IntOpt(
        "relay_wait_timeout",
        default=900,
        min=1,
        help="Longest time a redirected attempt holds the switchover back "
             "while earlier destinations relay their pages. After it the "
             "hold is lifted (a WARNING is logged) and Nova's own "
             "downtime steps apply, so a stuck relay can never keep a "
             "migration from converging. The new destination is polled "
             "with a backoff from 50 ms to 1 s.\n\n"
             "Services that use this: nova-compute (migration source).\n\n"
             "Related options: transport."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register ``[dcmigrate_compute]`` on ``conf``."""
    groups.register(conf, GROUP, OPTS)


def list_opts() -> dict[cfg.OptGroup, list[cfg.Opt]]:
    """Return the options for oslo-config-generator."""
    return {GROUP: OPTS}
