"""A subreaper for a lab libvirt host: reaps orphaned QEMUs at once.

Why: libvirtd daemonizes the QEMUs it starts, so they are orphans whose
exit is reaped by the nearest "child subreaper" or by PID 1.  When libvirt
stops a domain it waits until the QEMU process is gone (``kill(pid, 0)``
fails), which needs the zombie reaped.  On a real host systemd reaps at
once; the PID 1 of some sandboxes reaps only every ~1.3 s (measured), which
added that much to every ``abortJob`` and so to every redirect.  Run as the
parent of a host's daemons, this process becomes the reaper of everything
they start, as an init would be.

Usage (from the host's start script)::

    python -m nova_dcmigrate.lab.reaper STATUS_FILE CMD [ARG...] &

runs ``CMD`` (which starts the daemons and exits), writes its exit status
to ``STATUS_FILE``, then reaps until killed or nothing is left.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Make orphaned descendants of this process its children."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "prctl(PR_SET_CHILD_SUBREAPER): %s"
                      % os.strerror(err))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print("usage: reaper STATUS_FILE CMD [ARG...]", file=sys.stderr)
        return 2
    status_file, cmd = args[0], args[1:]
    become_subreaper()
    rc = subprocess.call(cmd)
    tmp = status_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % rc)
    os.replace(tmp, status_file)
    # The daemons are our children now (their parents exited); so is
    # every QEMU they start, once its intermediate parent exits.
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return rc          # every daemon and QEMU is gone
        except InterruptedError:
            continue


if __name__ == "__main__":
    sys.exit(main())
