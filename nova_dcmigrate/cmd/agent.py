"""dcmigrate-agent: the per-host migration agent daemon."""

from __future__ import annotations

import signal
import sys
from types import FrameType

from oslo_config import cfg
from oslo_log import log as logging

from nova_dcmigrate.agent import malloc_tuning
from nova_dcmigrate.agent.service import AgentService
import nova_dcmigrate.conf

CONF = nova_dcmigrate.conf.CONF
LOG = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    logging.register_options(CONF)
    CONF(sys.argv[1:] if argv is None else argv, project="nova-dcmigrate",
         prog="dcmigrate-agent")
    logging.setup(CONF, "nova-dcmigrate")
    # Before any thread starts: arenas are handed out per thread.
    malloc_tuning.limit_arenas(CONF.dcmigrate_agent.malloc_arena_max)
    service = AgentService(CONF)

    def _stop(signum: int, frame: FrameType | None) -> None:
        LOG.info("signal %(sig)d: stopping", {"sig": signum})
        service.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        service.start()
    except (OSError, cfg.Error) as err:
        LOG.error("cannot start dcmigrate-agent: %(err)s", {"err": err})
        return 1
    service.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
