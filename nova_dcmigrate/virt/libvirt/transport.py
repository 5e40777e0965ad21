"""How one live-migration attempt's libvirt job runs and is stopped.

``DCMigrateLibvirtDriver`` runs a live migration as a sequence of
attempts, one per destination; everything Nova-side (monitor, redirect
orchestration, post/rollback) is the same whatever carries the memory.
The libvirt calls that differ sit behind :class:`MigrationTransport`:

* :class:`DirectLibvirtTransport` -- Nova's stock job: ``migrateToURI3``
  from the source libvirtd straight to the destination (Nova's own
  ``_live_migration_operation``), and ``abortJob`` to stop it. A redirect
  then restarts the memory copy from scratch on the new destination.
  This is what runs today, and what Nova's functional harness exercises:
  there fakelibvirt replaces libvirt, its ``migrateToURI3`` is a test stub
  and its ``abortJob`` does nothing unless the test patches it, so no
  memory moves and no page is kept -- only Nova's side is real.
* The agent transport (next step) will run each attempt through
  ``nova_dcmigrate.virt.libvirt.controller.RedirectableMigration``: the
  job goes to the local dcmigrate agents, and a stopped attempt's
  destination agent keeps its pages for the next one. The controller has
  its own real-libvirt tests (``tests/functional/libvirt``).
"""

from __future__ import annotations

import abc
from typing import Any

from nova.virt.libvirt import driver as libvirt_driver


class MigrationTransport(metaclass=abc.ABCMeta):
    """Runs and stops the libvirt job of one migration attempt."""

    @abc.abstractmethod
    def run_attempt(self, driver: Any, context: Any, instance: Any,
                    dest: str, block_migration: Any, migrate_data: Any,
                    guest: Any, device_names: list[str]) -> None:
        """Run the job to ``dest`` until it ends (a worker thread).

        Arguments are those of ``LibvirtDriver._live_migration_operation``.

        :raises Exception: when the job fails or is stopped; Nova's
            monitor learns the outcome from the job statistics.
        """

    @abc.abstractmethod
    def stop_attempt(self, guest: Any) -> None:
        """Stop the running job so that another attempt can start.

        The guest keeps running on the source.

        :raises libvirt.libvirtError: if libvirt refuses (e.g. the job
            already ended).
        """


class DirectLibvirtTransport(MigrationTransport):
    """Nova's stock libvirt job, straight to the destination."""

    def run_attempt(self, driver: Any, context: Any, instance: Any,
                    dest: str, block_migration: Any, migrate_data: Any,
                    guest: Any, device_names: list[str]) -> None:
        # The stock implementation, not the driver's override (which
        # delegates here).
        libvirt_driver.LibvirtDriver._live_migration_operation(
            driver, context, instance, dest, block_migration, migrate_data,
            guest, device_names)

    def stop_attempt(self, guest: Any) -> None:
        guest.abort_job()
