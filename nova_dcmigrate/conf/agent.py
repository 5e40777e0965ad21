"""Options of the dcmigrate-agent daemon (group ``[dcmigrate_agent]``)."""

from __future__ import annotations

from oslo_config import cfg

from nova_dcmigrate.conf import groups

GROUP = cfg.OptGroup(
    "dcmigrate_agent",
    title="dcmigrate-agent options",
    help="The per-host agent that carries QEMU migration streams between "
         "hosts and keeps a store of the pages it received.")

OPTS = [
    cfg.StrOpt(
        "host",
        help="Name of this compute host; the agent serves RPC on topic "
             "'dcmigrate-agent' with this server name. Defaults to the "
             "[DEFAULT] host option, then to the machine's hostname.\n\n"
             "Services that use this: dcmigrate-agent."),
    cfg.HostAddressOpt(
        "peer_listen_address",
        default="0.0.0.0",
        help="Address on which the agent accepts authenticated connections "
             "from the agents of other hosts.\n\n"
             "Related options: peer_port."),
    cfg.PortOpt(
        "peer_port",
        default=16590,
        help="TCP port for agent-to-agent connections. Every agent of a "
             "deployment must use the same port.\n\n"
             "Related options: peer_listen_address."),
    cfg.IntOpt(
        "max_peer_connections",
        default=64, min=1,
        help="Most connections the peer port keeps in the authentication "
             "handshake at once (each for at most handshake_timeout). "
             "Further connections are closed at once and counted as "
             "rejected, so a flood of connections cannot exhaust the "
             "agent's threads or file descriptors. An authenticated "
             "connection belongs to its session: one per prepared attempt, "
             "plus one per holder after a redirect.\n\n"
             "Related options: peer_port, handshake_timeout."),
    cfg.StrOpt(
        "socket_dir",
        default="/run/dcmigrate",
        help="Directory of the UNIX sockets between the agent and the "
             "local libvirtd/QEMU. Every attempt gets a 0700 directory in "
             "it: owned by root on the source, where the agent listens and "
             "libvirtd connects, and by qemu_user:qemu_group on the "
             "destination, where QEMU listens and the agent connects. "
             "Created 0755 root if missing; refused if group or others may "
             "write to it. Must be the same path on every host (libvirt "
             "gives one unix:// URI to both ends) and short (socket paths "
             "are limited to 107 bytes).\n\n"
             "Related options: qemu_user, qemu_group."),
    cfg.StrOpt(
        "qemu_user",
        default="libvirt-qemu",
        help="User the destination QEMU runs as (libvirt's qemu.conf "
             "'user'; 'qemu' on RHEL-like systems, 'root' if QEMU runs as "
             "root). Owner of the destination's socket directory.\n\n"
             "Related options: qemu_group, socket_dir."),
    cfg.StrOpt(
        "qemu_group",
        default="kvm",
        help="Group the destination QEMU runs as (libvirt's qemu.conf "
             "'group'; 'qemu' on RHEL-like systems).\n\n"
             "Related options: qemu_user, socket_dir."),
    cfg.BoolOpt(
        "peer_tls",
        default=False,
        help="Wrap agent-to-agent connections in mutual TLS 1.3 (x509 "
             "certificates like libvirt's migration TLS). Without it, guest "
             "memory crosses the migration network unencrypted: frames are "
             "authenticated (HMAC) but readable by anyone on the path. All "
             "agents of a deployment must agree. The Nova driver asks for "
             "it with [libvirt] live_migration_with_native_tls.\n\n"
             "Related options: peer_tls_ca_file, peer_tls_cert_file, "
             "peer_tls_key_file."),
    cfg.StrOpt(
        "peer_tls_ca_file",
        default="/etc/pki/qemu/ca-cert.pem",
        help="CA certificate(s) that sign every agent's certificate; peers "
             "whose certificate it does not verify are refused. The "
             "default is libvirt's migration TLS CA path.\n\n"
             "Related options: peer_tls."),
    cfg.StrOpt(
        "peer_tls_cert_file",
        default="/etc/pki/qemu/server-cert.pem",
        help="This agent's certificate (PEM), used both to accept and to "
             "connect. Its subjectAltName must name the address other "
             "agents reach this agent at (the host name is checked when "
             "connecting).\n\n"
             "Related options: peer_tls, peer_tls_key_file."),
    cfg.StrOpt(
        "peer_tls_key_file",
        default="/etc/pki/qemu/server-key.pem",
        help="Private key of peer_tls_cert_file (PEM).\n\n"
             "Related options: peer_tls."),
    cfg.IntOpt(
        "chunk_size",
        default=256 * 1024, min=16 * 1024, max=4 * 1024 * 1024,
        help="Bytes read from QEMU per receive call, and the largest payload "
             "of one agent-to-agent frame (bytes)."),
    cfg.IntOpt(
        "socket_buffer",
        default=128 * 1024, min=0, max=16 * 1024 * 1024,
        help="Kernel send/receive buffer size (bytes) for migration sockets; "
             "0 keeps the kernel default. Bytes queued in the agents are "
             "already counted as sent by QEMU and drain during the "
             "switchover, so small buffers keep downtime close to a direct "
             "migration's (measured on 300 Mbit/s links: +44 ms at 64 KiB, "
             "+73 ms at 256 KiB, +144 ms at 1 MiB)."),
    cfg.IntOpt(
        "assist_buffer_mib",
        default=256, min=0,
        help="Memory (MiB) a source agent may use per redirected attempt to "
             "keep the held pages it skipped in the first pass. With them it "
             "can still send those pages itself when the holders fall behind "
             "(the new destination raises the frontier of the optimised "
             "split after the source passed it), so the first plan's guess "
             "of what the source has left to send matters less. 0: skipped "
             "pages are dropped and the frontier can only be raised up to "
             "the first of them."),
    cfg.BoolOpt(
        "hold_qemu_ram",
        default=True,
        help="A destination agent opens the guest RAM of the QEMU it feeds "
             "(a memfd or a shared file in libvirt's memory_backing_dir) "
             "and keeps it open after that QEMU exits, instead of copying "
             "every page it forwards: a plain migration then costs the "
             "destination no second copy of the guest's RAM, and after a "
             "redirect the old destination keeps what its QEMU had "
             "allocated until the migration ends or its store expires. "
             "Needs the guest booted with shared RAM ([dcmigrate_compute] "
             "memory_backing), root and the host's PID view. When the RAM "
             "cannot be opened the agent copies the pages (see "
             "copy_store_max_mib).\n\n"
             "Related options: copy_store_max_mib, store_expiry."),
    cfg.IntOpt(
        "copy_store_max_mib",
        default=2048, min=0,
        help="Most memory (MiB) one agent uses, for all its migrations, to "
             "copy pages it forwarded to a QEMU whose RAM it cannot hold "
             "(a guest booted with anonymous RAM, QEMU's ROM blocks). Pages "
             "beyond it are not kept: a redirect resends them from the "
             "source.\n\n"
             "Related options: hold_qemu_ram."),
    cfg.IntOpt(
        "store_expiry",
        default=1800, min=1,
        help="Seconds a migration's state (page store, held guest RAM, "
             "sessions) is kept once nothing uses it: no session or relay "
             "running. The controller normally drops it when the migration "
             "ends; this bounds what stays behind when it cannot (e.g. "
             "nova-compute died mid-migration). It must exceed the longest "
             "pause between a redirect's abort and the new attempt's "
             "relays."),
    cfg.IntOpt(
        "malloc_arena_max",
        default=2, min=0,
        help="Most glibc malloc arenas the agent process uses (mallopt "
             "M_ARENA_MAX, set at start). glibc's default (8 per core) "
             "keeps freed frame buffers resident in one arena per thread; "
             "two keep a redirect's destination agents within 2% of guest "
             "RAM (see the agent documentation's memory table). 0 leaves "
             "glibc's default (or MALLOC_ARENA_MAX from the environment)."),
    cfg.IntOpt(
        "ram_overhead_mib",
        default=512, min=0,
        help="Allowance (MiB) on top of the domain's memory for the RAM "
             "blocks a migration stream may announce (firmware, option "
             "ROMs, video RAM). A stream or holder whose blocks sum to "
             "more than the domain's memory (given by the controller at "
             "prepare) plus this is refused before anything is "
             "allocated."),
    cfg.FloatOpt(
        "ack_interval",
        default=0.1, min=0.01,
        help="Seconds between inventory acknowledgements that a destination "
             "agent sends to the source agent."),
    cfg.FloatOpt(
        "handshake_timeout",
        default=10.0, min=0.5,
        help="Seconds a peer has to complete the authentication handshake "
             "before it is dropped."),
    cfg.FloatOpt(
        "connect_timeout",
        default=30.0, min=0.5,
        help="Seconds to keep trying to reach a peer agent or the local "
             "destination QEMU before the attempt fails."),
    cfg.FloatOpt(
        "session_timeout",
        default=600.0, min=1.0,
        help="Seconds a prepared migration session may wait for its "
             "connections before it is dropped."),
    cfg.BoolOpt(
        "count_needed_pages",
        default=False,
        help="Benchmark aid. When the rate hints give a redirect's holders "
             "nothing, the new destination does not contact them; with "
             "this on it still reads their inventories in the background "
             "(19 bytes per guest page from each holder, nothing relayed) "
             "to report which pages only the source could send, the "
             "lower bound dcmigrate-bench compares against. Leave off in "
             "production: it costs the holders' uploads and this host's "
             "download for a number only the benchmark uses."),
    cfg.BoolOpt(
        "connect_holders_early",
        default=True,
        help="A new destination of a redirect connects to the holders, "
             "reads their inventories and (holding no page itself) plans "
             "as soon as it is prepared, while libvirt still stops the "
             "old attempt and starts the destination QEMU, instead of "
             "once the source's stream arrives: the source's first byte "
             "then no longer waits for the inventories (over a slow "
             "holder's link this was 0.3-0.4 s). The work is the same, "
             "only earlier; on hosts without a spare core it competes "
             "with the QEMU start. Set to false to plan only when the "
             "source's stream arrives."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register ``[dcmigrate_agent]`` on ``conf``."""
    groups.register(conf, GROUP, OPTS)


def list_opts() -> dict[cfg.OptGroup, list[cfg.Opt]]:
    return {GROUP: OPTS}
