"""Run the devstack plugin's own functions for one lab host.

Why: the plugin (``devstack/lib/dcmigrate``) is what operators and the gate
use; the lab cloud configures our parts through it, with the stand-ins of
``devstack-shim.sh`` for the devstack helpers it calls, so every
``make tempest`` exercises the plugin instead of a copy of it.
"""

from __future__ import annotations

from pathlib import Path
import sys

from nova_dcmigrate.lab.cloud import procs

SHIM = Path(__file__).with_name("devstack-shim.sh")


def run_functions(repo: Path, functions: list[str], env: dict[str, str],
                  log: Path) -> None:
    """Source settings + lib/dcmigrate and call ``functions`` in order.

    :param repo: the nova-dcmigrate source tree (holds ``devstack/``).
    :param env: devstack variables (``NOVA_CPU_CONF``, ``HOST_IP``...) and
        the shim's ``CLOUD_*`` inputs.
    """
    script = (f"source {SHIM}\n"
              "function enable_service { :; }\n"
              f"source {repo / 'devstack' / 'settings'}\n"
              f"source {repo / 'devstack' / 'lib' / 'dcmigrate'}\n"
              + "".join(f"{func}\n" for func in functions))
    full = {"CLOUD_VENV": sys.prefix, "DEST": str(repo.parent),
            "DCMIGRATE_DIR": str(repo), "ENABLE_DEBUG_LOG_LEVEL": "False",
            "DATA_DIR": str(log.parent.parent / "data"),
            "PATH": f"{sys.prefix}/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    full.update(env)
    procs.run(["bash", "-c", script], log, env=full, timeout=120)
