"""The dcmigrate-agent service: RPC server plus peer listener."""

from __future__ import annotations

import socket
import threading

from oslo_config import cfg
from oslo_log import log as logging
import oslo_messaging as messaging

from nova_dcmigrate.agent.manager import AgentManager
from nova_dcmigrate.agent.rpcapi import EXCHANGE
from nova_dcmigrate.agent.rpcapi import TOPIC
from nova_dcmigrate import rpc

LOG = logging.getLogger(__name__)


def agent_host(conf: cfg.ConfigOpts) -> str:
    host = conf.dcmigrate_agent.host
    if not host:
        host = getattr(conf, "host", None) or socket.gethostname()
    return str(host)


class AgentService:
    def __init__(self, conf: cfg.ConfigOpts) -> None:
        self.conf = conf
        self.host = agent_host(conf)
        self.manager = AgentManager(conf.dcmigrate_agent, self.host)
        self.transport = rpc.get_transport(conf)
        target = messaging.Target(exchange=EXCHANGE, topic=TOPIC,
                                  server=self.host)
        self.server = rpc.get_server(self.transport, target, [self.manager])
        self._stopped = threading.Event()

    def start(self) -> None:
        self.manager.start()
        self.server.start()
        LOG.info("dcmigrate-agent serving host %(host)s",
                 {"host": self.host})

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        try:
            self.server.stop()
            self.server.wait()
        finally:
            self.manager.stop()
            self.transport.cleanup()

    def wait(self) -> None:
        self._stopped.wait()
