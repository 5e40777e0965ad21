"""Facts about the bench machine that its numbers depend on.

Why: on a virtual machine whose free memory goes back to the hypervisor
(virtio-balloon free page reporting), the first touch of a page after
that costs several times a recycled one (8-11 us against 1.8 us per page
measured on the development VM, 2026-12-04).  Every QEMU faults in the
pages it is sent, so the same code measures differently depending on how
much memory the machine handed back -- and methods that free memory
earlier (restart drops the old destinations' RAM at each abort) get
recycled pages where the others get cold ones.  The JSON records it so
that numbers from different machines or days can be read side by side.
"""

from __future__ import annotations

import os
from typing import Any

#: Parameters of the kernel's free page reporting (a module parameter
#: directory; absent when the kernel has none or it is built in without
#: parameters).
PAGE_REPORTING_DIR = "/sys/module/page_reporting/parameters"


def free_page_reporting(path: str = PAGE_REPORTING_DIR
                        ) -> dict[str, Any] | None:
    """The free page reporting parameters and counters (integers where
    they are numbers), or None if the kernel reports none."""
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return None
    out: dict[str, Any] = {}
    for name in names:
        try:
            with open(os.path.join(path, name)) as f:
                text = f.read().strip()
        except OSError:
            continue                    # write-only or vanished
        try:
            out[name] = int(text)
        except ValueError:
            out[name] = text
    return out
