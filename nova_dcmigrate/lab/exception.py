"""Errors raised by the network-namespace lab.

The lab is test and benchmark tooling, but its failures still need to say
exactly what broke (which host, which QEMU, which command), because a lab
run that dies with a bare ``CalledProcessError`` costs minutes to debug.

::

    LabError
     +-- LabPermissionError
     +-- ImageBuildError
     +-- TopologyError
     |    +-- InvalidLabSpec
     |    +-- UnknownLabHost
     |    +-- LabClosedError
     +-- GuestError
     |    +-- GuestExited
     |    +-- GuestTimeout
     |    +-- QmpCommandError
     +-- MigrationError
     |    +-- MigrationFailed
     |    +-- MigrationTimeout
     +-- RamCheckError
 +-- SharedServiceBusy
"""

from __future__ import annotations

from nova_dcmigrate.exception import DcmigrateError


class LabError(DcmigrateError):
    msg_fmt = "Lab error: %(reason)s"


class LabPermissionError(LabError):
    msg_fmt = ("The lab needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to "
               "%(operation)s; running as uid %(uid)s.")


class ImageBuildError(LabError):
    msg_fmt = "Building the guest image failed at step '%(step)s': %(reason)s"


class TopologyError(LabError):
    msg_fmt = "Lab %(run_id)s: %(operation)s failed: %(reason)s"


class InvalidLabSpec(TopologyError):
    msg_fmt = "Invalid lab specification: %(reason)s"


class UnknownLabHost(TopologyError):
    msg_fmt = "Lab %(run_id)s has no host '%(host)s' (hosts: %(hosts)s)."


class LabClosedError(TopologyError):
    msg_fmt = "Lab %(run_id)s is closed; cannot %(operation)s."


class GuestError(LabError):
    msg_fmt = "Guest %(name)s: %(reason)s"


class GuestExited(GuestError):
    msg_fmt = ("QEMU of guest %(name)s exited with status %(returncode)s "
               "while %(waiting_for)s; last output: %(output)s")


class GuestTimeout(GuestError):
    msg_fmt = ("Guest %(name)s: no %(waiting_for)s within %(timeout)s s "
               "(serial log %(serial_log)s).")


class QmpCommandError(GuestError):
    msg_fmt = "Guest %(name)s: QMP command %(command)s failed: %(error)s"


class MigrationError(LabError):
    msg_fmt = "Migration of guest %(name)s failed: %(reason)s"


class MigrationFailed(MigrationError):
    msg_fmt = ("Migration of guest %(name)s ended in status %(status)s: "
               "%(error)s")


class MigrationTimeout(MigrationError):
    msg_fmt = ("Migration of guest %(name)s still in status %(status)s "
               "after %(timeout)s s (%(transferred)s bytes sent, "
               "%(remaining)s remaining).")


class RamCheckError(LabError):
    msg_fmt = "Cannot compare RAM of %(src)s and %(dst)s: %(reason)s"


class SharedServiceBusy(LabError):
    """A lock of a service shared by lab runs (the RabbitMQ broker) stayed
    taken: another run is stopping it, or hangs while doing so."""

    msg_fmt = ("%(action)s: %(path)s is still locked after %(timeout).0f s "
               "(held by pids: %(holders)s)")
