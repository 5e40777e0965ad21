"""The lab cloud's control plane: databases, identity, images, Nova.

Recipe and numbers: doc/source/lab-cloud.rst.  Every HTTP service is a
uwsgi with ``--http11-socket`` (with ``--http-socket`` uwsgi closes kept-
alive connections after an error and the next request of a keystoneauth
session fails) bound to the lab bridge's address, so that the computes in
the lab hosts' namespaces reach it.
"""

from __future__ import annotations

import configparser
import json
from pathlib import Path
import secrets
import shutil
import sys
import urllib.request

from oslo_log import log as logging

from nova_dcmigrate.lab.cloud import procs
from nova_dcmigrate.lab import rabbit

LOG = logging.getLogger(__name__)

PORTS = {"keystone": 5000, "placement": 8778, "glance": 9292,
         "neutron": 9696, "nova": 8774, "mysql": 3306}
DATABASES = ("keystone", "placement", "glance", "nova_api", "nova",
             "nova_cell0", "neutron")
SERVICE_USERS = ("nova", "placement", "glance", "neutron", "dcmigrate")
UWSGI_FLAGS = ["--master", "--processes", "1", "--threads", "4",
               "--enable-threads", "--die-on-term", "--lazy-apps",
               "--need-app", "--buffer-size", "65535"]


def write_ini(path: Path, sections: dict[str, dict[str, object]]) -> None:
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    if path.exists():
        cp.read(path)
    for section, opts in sections.items():
        if section != "DEFAULT" and not cp.has_section(section):
            cp.add_section(section)
        for key, value in opts.items():
            cp.set(section, key, str(value))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        cp.write(f)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return bool(resp.status < 500)
    except urllib.error.HTTPError as err:
        return err.code < 500


class ControlPlane:
    """Starts the control plane into ``workdir`` (see :meth:`start`)."""

    def __init__(self, workdir: Path, address: str, run_id: str,
                 processes: procs.Processes,
                 neutron_stub: bool = False) -> None:
        self.dir = workdir
        #: The read-only stand-in (neutron_stub.py) instead of
        #: neutron-server.
        self.neutron_stub = neutron_stub
        self.address = address
        self.run_id = run_id
        self.procs = processes
        self.venv = Path(sys.prefix)
        self.bin = self.venv / "bin"
        self.etc = workdir / "etc"
        self.log_dir = workdir / "log"
        self.setup_log = self.log_dir / "setup.log"
        self.password = secrets.token_hex(8)
        self.db_password = secrets.token_hex(8)
        self.vhost = rabbit.RabbitVhost(run_id)
        self.broker = rabbit.RabbitBroker()
        self.transport_url = ""
        self.nova_conf = self.etc / "nova" / "nova.conf"
        self.compute_sections: dict[str, dict[str, object]] = {}

    # -- helpers -------------------------------------------------------

    def url(self, service: str, path: str = "") -> str:
        return f"http://{self.address}:{PORTS[service]}{path}"

    def db(self, name: str) -> str:
        return (f"mysql+pymysql://os:{self.db_password}@{self.address}:"
                f"{PORTS['mysql']}/{name}?charset=utf8")

    def auth(self, user: str) -> dict[str, object]:
        return {"auth_type": "password", "auth_url": self.url("keystone",
                                                              "/v3"),
                "username": user, "password": self.password,
                "project_name": "service", "user_domain_name": "Default",
                "project_domain_name": "Default",
                "region_name": "RegionOne"}

    def authtoken(self, user: str) -> dict[str, object]:
        opts = self.auth(user)
        opts["www_authenticate_uri"] = self.url("keystone")
        opts.pop("region_name")
        return opts

    def admin_env(self) -> dict[str, str]:
        return {"OS_AUTH_URL": self.url("keystone", "/v3"),
                "OS_USERNAME": "admin", "OS_PASSWORD": self.password,
                "OS_PROJECT_NAME": "admin", "OS_USER_DOMAIN_ID": "default",
                "OS_PROJECT_DOMAIN_ID": "default",
                "OS_REGION_NAME": "RegionOne", "OS_IDENTITY_API_VERSION": "3",
                "OS_INTERFACE": "public"}

    def _run(self, argv: list[str], **kwargs: object) -> str:
        return procs.run(argv, self.setup_log, **kwargs)  # type: ignore

    def _uwsgi(self, name: str, module: str, port: int,
               env: dict[str, str], extra: list[str] | None = None) -> None:
        argv = [str(self.bin / "uwsgi"), "--http11-socket",
                f"{self.address}:{port}", "--module", module,
                "--virtualenv", str(self.venv), *UWSGI_FLAGS,
                *(extra or [])]
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        self.procs.start(name, argv)

    # -- start ---------------------------------------------------------

    def start_databases(self) -> None:
        datadir = self.dir / "mysql"
        self._run(["mariadb-install-db", "--no-defaults",
                   f"--datadir={datadir}", "--user=root",
                   "--auth-root-authentication-method=normal",
                   "--skip-test-db"])
        sock = self.dir / "mysql.sock"
        self.procs.start("mariadb", [
            "mariadbd", "--no-defaults", f"--datadir={datadir}",
            f"--socket={sock}", f"--port={PORTS['mysql']}",
            f"--bind-address={self.address}", "--user=root",
            f"--pid-file={self.dir / 'mysql.pid'}",
            "--max-connections=500", "--innodb-buffer-pool-size=64M",
            "--skip-name-resolve"])
        sql = "".join(f"CREATE DATABASE {db};" for db in DATABASES)
        sql += (f"CREATE USER 'os'@'%' IDENTIFIED BY '{self.db_password}';"
                "GRANT ALL ON *.* TO 'os'@'%';")
        procs.wait_for("mariadb", lambda: procs.run(
            ["mariadb", f"--socket={sock}", "-uroot", "-e", "SELECT 1"],
            self.setup_log, timeout=10) is not None, 60, self.setup_log,
            lambda: self.procs.check("mariadb"))
        self._run(["mariadb", f"--socket={sock}", "-uroot", "-e", sql])
        self.broker.ensure_running()
        # Ours from here on, even if creating it fails half-way.
        self.vhost.created = True
        self.vhost.create()
        self.transport_url = self.vhost.url(self.address)

    def start_keystone(self) -> None:
        conf_dir = self.etc / "keystone"
        conf = conf_dir / "keystone.conf"
        write_ini(conf, {
            "DEFAULT": {"log_file": self.log_dir / "keystone-app.log"},
            "database": {"connection": self.db("keystone")},
            "token": {"provider": "fernet"},
            "fernet_tokens": {"key_repository": conf_dir / "fernet-keys"},
            "credential": {"key_repository": conf_dir / "credential-keys"},
        })
        manage = [str(self.bin / "keystone-manage"), "--config-file",
                  str(conf)]
        self._run(manage + ["db_sync"])
        for step in ("fernet_setup", "credential_setup"):
            self._run(manage + [step, "--keystone-user", "root",
                                "--keystone-group", "root"])
        url = self.url("keystone", "/v3/")
        self._run(manage + ["bootstrap", "--bootstrap-password",
                            self.password, "--bootstrap-admin-url", url,
                            "--bootstrap-internal-url", url,
                            "--bootstrap-public-url", url,
                            "--bootstrap-region-id", "RegionOne"])
        self._uwsgi("keystone", "keystone.wsgi.api:application",
                    PORTS["keystone"], {"OS_KEYSTONE_CONFIG_DIR":
                                        str(conf_dir)})
        procs.wait_for("keystone", lambda: http_ok(self.url(
            "keystone", "/v3")), 120, self.log_dir / "keystone.log",
            lambda: self.procs.check("keystone"))
        spec = {"password": self.password, "users": list(SERVICE_USERS),
                "services": [
                    ["placement", "placement", self.url("placement")],
                    ["glance", "image", self.url("glance")],
                    ["neutron", "network", self.url("neutron")],
                    ["nova", "compute", self.url("nova", "/v2.1")]]}
        self._run([sys.executable, "-m", "nova_dcmigrate.lab.cloud.catalog",
                   "bootstrap", json.dumps(spec)], env=self.admin_env())

    def start_placement_glance_neutron(self) -> None:
        conf_dir = self.etc / "placement"
        write_ini(conf_dir / "placement.conf", {
            "DEFAULT": {"log_file": self.log_dir / "placement-app.log"},
            "placement_database": {"connection": self.db("placement")},
            "api": {"auth_strategy": "keystone"},
            "keystone_authtoken": self.authtoken("placement")})
        self._run([str(self.bin / "placement-manage"), "--config-file",
                   str(conf_dir / "placement.conf"), "db", "sync"])
        self._uwsgi("placement", "placement.wsgi.api:application",
                    PORTS["placement"],
                    {"OS_PLACEMENT_CONFIG_DIR": str(conf_dir)})

        gdir = self.etc / "glance"
        store = self.dir / "glance"
        paste = gdir / "glance-api-paste.ini"
        gdir.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.venv / "etc" / "glance" / "glance-api-paste.ini",
                    paste)
        write_ini(gdir / "glance-api.conf", {
            "DEFAULT": {"log_file": self.log_dir / "glance-app.log",
                        "enabled_backends": "file1:file"},
            "database": {"connection": self.db("glance")},
            "glance_store": {"default_backend": "file1"},
            "file1": {"filesystem_store_datadir": store / "images"},
            "os_glance_staging_store": {
                "filesystem_store_datadir": store / "staging"},
            "os_glance_tasks_store": {
                "filesystem_store_datadir": store / "tasks"},
            "keystone_authtoken": self.authtoken("glance"),
            "paste_deploy": {"flavor": "keystone", "config_file": paste}})
        self._run([str(self.bin / "glance-manage"), "--config-file",
                   str(gdir / "glance-api.conf"), "db_sync"])
        self._uwsgi("glance", "glance.wsgi.api:application",
                    PORTS["glance"], {"OS_GLANCE_CONFIG_DIR": str(gdir)},
                    ["--http-chunked-input", "--http-raw-body"])
        if self.neutron_stub:
            self.procs.start("neutron-stub", [
                sys.executable, "-m",
                "nova_dcmigrate.lab.cloud.neutron_stub",
                self.address, str(PORTS["neutron"])])
        else:
            self.start_neutron()

    @property
    def neutron_name(self) -> str:
        return "neutron-stub" if self.neutron_stub else "neutron-api"

    def start_neutron(self) -> None:
        """neutron-server's API: ML2 without mechanism drivers or L2
        agents (servers boot with ``--nic none``; what Nova asks Neutron
        for them is in doc/source/lab-cloud.rst).  No RPC server: nothing
        (no agent) would call it."""
        ndir = self.etc / "neutron"
        conf, ml2 = ndir / "neutron.conf", ndir / "ml2_conf.ini"
        paste = ndir / "api-paste.ini"
        ndir.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.venv / "etc" / "neutron" / "api-paste.ini", paste)
        write_ini(conf, {
            # "router": its module defines Port.port_forwardings, which
            # every port listing reads (neutron 29 fails without it).
            "DEFAULT": {"log_file": self.log_dir / "neutron-api-app.log",
                        "core_plugin": "ml2", "service_plugins": "router",
                        "api_paste_config": paste,
                        "auth_strategy": "keystone",
                        "transport_url": self.transport_url,
                        "notify_nova_on_port_status_changes": "False",
                        "notify_nova_on_port_data_changes": "False",
                        "rpc_workers": 0, "debug": "False"},
            "database": {"connection": self.db("neutron")},
            "keystone_authtoken": self.authtoken("neutron"),
            "oslo_concurrency": {"lock_path": self.dir / "neutron-lock"},
        })
        write_ini(ml2, {
            "ml2": {"type_drivers": "flat", "tenant_network_types": "",
                    "mechanism_drivers": "", "extension_drivers": ""},
            "ml2_type_flat": {"flat_networks": "*"}})
        self._run([str(self.bin / "neutron-db-manage"), "--config-file",
                   str(conf), "--config-file", str(ml2), "upgrade",
                   "heads"], timeout=600)
        self._uwsgi("neutron-api", "neutron.wsgi.api:application",
                    PORTS["neutron"], {
                        "OS_NEUTRON_CONFIG_DIR": str(ndir),
                        "OS_NEUTRON_CONFIG_FILES":
                            "neutron.conf;ml2_conf.ini"})

    def nova_sections(self) -> dict[str, dict[str, object]]:
        """nova.conf of the control services (computes: minus the DBs)."""
        return {
            "DEFAULT": {"transport_url": self.transport_url,
                        "my_ip": self.address,
                        "state_path": self.dir / "nova",
                        "graceful_shutdown_timeout": 10,
                        "debug": "False"},
            "api_database": {"connection": self.db("nova_api")},
            "database": {"connection": self.db("nova")},
            "api": {"auth_strategy": "keystone"},
            "keystone_authtoken": self.authtoken("nova"),
            "service_user": dict(self.auth("nova"),
                                 send_service_user_token="True"),
            "placement": self.auth("placement"),
            "neutron": dict(self.auth("neutron"),
                            endpoint_override=self.url("neutron")),
            "glance": {"endpoint_override": self.url("glance")},
            "wsgi": {"api_paste_config": self.etc / "nova" /
                     "api-paste.ini"},
            "scheduler": {"discover_hosts_in_cells_interval": -1,
                          "workers": 1},
            "conductor": {"workers": 1},
            "vnc": {"enabled": "False"},
            "oslo_concurrency": {"lock_path": self.dir / "nova" / "lock"},
            "oslo_messaging_rabbit": {"heartbeat_in_pthread": "False"},
        }

    def configure_nova(self) -> None:
        ndir = self.etc / "nova"
        ndir.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.venv / "etc" / "nova" / "api-paste.ini",
                    ndir / "api-paste.ini")
        write_ini(self.nova_conf, self.nova_sections())

    def start_nova(self) -> None:
        """nova DBs and cells, then API, conductor and scheduler (the
        scheduler after our devstack functions configured it)."""
        conf = str(self.nova_conf)
        manage = [str(self.bin / "nova-manage"), "--config-file", conf]
        self._run(manage + ["api_db", "sync"])
        self._run(manage + ["cell_v2", "map_cell0", "--database_connection",
                            self.db("nova_cell0")])
        self._run(manage + ["cell_v2", "create_cell", "--name", "cell1"])
        self._run(manage + ["db", "sync"])
        api_dir = self.etc / "nova-api"
        api_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.nova_conf, api_dir / "nova.conf")
        write_ini(api_dir / "nova.conf", {"DEFAULT": {
            "log_file": self.log_dir / "nova-api-app.log"}})
        shutil.copy(self.etc / "nova" / "api-paste.ini", api_dir)
        self._uwsgi("nova-api", "nova.wsgi.osapi_compute:application",
                    PORTS["nova"], {"OS_NOVA_CONFIG_DIR": str(api_dir)})
        for service in ("nova-conductor", "nova-scheduler"):
            self.procs.start(service, [
                str(self.bin / service), "--config-file", conf,
                "--log-file", str(self.log_dir / f"{service}-app.log")])
        for service, url in (("placement", self.url("placement")),
                             ("glance", self.url("glance")),
                             (self.neutron_name, self.url("neutron")),
                             ("nova-api", self.url("nova", "/v2.1"))):
            self._wait_http(service, url)
        if not self.neutron_stub:
            # neutron 29 answers the first port listing of a fresh process
            # with a 500 (SQLAlchemy's mappers, with the port_forwardings
            # backref, are configured by the first query; get_ports reads
            # that attribute before querying).  Any other query first
            # avoids it; Nova's first call is a port listing.
            self._run([str(self.bin / "openstack"), "network", "list",
                       "-f", "value"], env=self.admin_env())

    def _wait_http(self, service: str, url: str) -> None:
        procs.wait_for(service, lambda: http_ok(url), 120,
                       self.log_dir / f"{service}.log",
                       lambda: self.procs.check(service))

    def discover_hosts(self) -> None:
        self._run([str(self.bin / "nova-manage"), "--config-file",
                   str(self.nova_conf), "cell_v2", "discover_hosts"])

    def stop(self) -> None:
        """Remove the RabbitMQ vhost and user (processes: procs)."""
        self.vhost.delete()
