"""Fixtures of the functional tests.

These tests use real parts: QEMU guests under TCG in network namespaces,
the real dcmigrate-agent daemons, and a real RabbitMQ broker for their
oslo.messaging RPC.  They need root.  The broker is started if it is not
running, and stopped again at the end if these tests started it and no
other lab run uses it (nova_dcmigrate/lab/rabbit.py).
"""

from __future__ import annotations

import os

import pytest

from nova_dcmigrate.lab import image
from nova_dcmigrate.lab import rabbit

needs_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="functional tests need root (network namespaces, QEMU, tc)")


@pytest.fixture(scope="session")
def guest_image() -> image.GuestImage:
    return image.build_guest_image()


@pytest.fixture(scope="session")
def rabbit_broker():
    if os.geteuid() != 0:
        pytest.skip("RabbitMQ is started as root")
    broker = rabbit.broker_from_env()
    yield broker
    broker.stop()
