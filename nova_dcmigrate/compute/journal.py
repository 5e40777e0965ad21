"""What a restarted nova-compute needs to finish or undo a redirect.

A redirect's state (:class:`~.run.LiveMigrationRun`, its pending clean-up
steps) lives in the source's memory; a nova-compute restart in the middle
of a redirect would forget which hosts hold parts of the instance. The
source therefore keeps one small JSON record per redirected live
migration, :class:`RunRecord`, in a local directory
(``[dcmigrate_compute] state_dir``, default ``$state_path/dcmigrate/runs``)
and drops it when the run ended and every clean-up step is done.

Why a local file and not the instance's ``system_metadata``: the record
holds the serialised ``LiveMigrateData`` and the source's BDMs (a few KiB;
a ``system_metadata`` value is limited to 255 characters), and it changes
while Nova itself saves the instance with ``expected_task_state`` guards
during the migration: an extra ``instance.save()`` from the redirect path
could race them. Only the source ever reads the record back (its driver's
``process_instances_at_startup``), so a local file is enough.

Writes are atomic (a temporary file in the same directory, ``fsync``,
``os.replace``, then ``fsync`` of the directory): a crash leaves the old
or the new record, never half of one. A record that cannot be read
(corrupt, unknown version) is renamed to ``<name>.corrupt`` with an ERROR
naming what the operator must check, and is not acted on. The size of a
record is bounded (``run_record_max_bytes``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from typing import Any

from oslo_log import log as logging

from nova_dcmigrate.compute import exception

LOG = logging.getLogger(__name__)

#: Format version of the records this code writes and reads.
VERSION = 1
SUFFIX = ".json"
CORRUPT_SUFFIX = ".corrupt"


@dataclasses.dataclass
class RunRecord:
    """One redirected live migration, as persisted by its source."""

    instance: str
    migration: str
    source: str
    #: Every destination so far, the current one last.
    destinations: list[str]
    #: Host being prepared (not yet the destination), or None.
    target: str | None = None
    #: The run's phase when written (see :mod:`.run`).
    phase: str = "running"
    #: ``LiveMigrateData.obj_to_primitive()`` of the current attempt.
    migrate_data: dict[str, Any] | None = None
    #: ``obj_to_primitive()`` of each BDM as on the source before the
    #: migration.
    source_bdms: list[dict[str, Any]] = dataclasses.field(
        default_factory=list)
    #: ``{host: [Cinder attachment ids]}`` made for each destination.
    attachments: dict[str, list[str]] = dataclasses.field(
        default_factory=dict)
    #: Hosts whose clean-up is not done yet (after the run ended).
    cleanup_hosts: list[str] = dataclasses.field(default_factory=list)

    @property
    def dest(self) -> str:
        return self.destinations[-1]

    def hosts(self) -> list[str]:
        """Every host other than the source that may hold a part of it."""
        seen: list[str] = []
        for host in [*self.destinations, self.target,
                     *self.attachments, *self.cleanup_hosts]:
            if host and host != self.source and host not in seen:
                seen.append(host)
        return seen

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["version"] = VERSION
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunRecord:
        """:raises ValueError: not a record of :data:`VERSION`."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.pop("version", None) != VERSION:
            raise ValueError("not a version %d record" % VERSION)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError("unknown fields %s" % sorted(unknown))
        record = cls(**data)
        if not (isinstance(record.instance, str) and
                isinstance(record.destinations, list) and
                record.destinations):
            raise ValueError("no instance or destinations")
        return record


class RunJournal:
    """The records of one source, one file per instance.

    :param directory: created on first write (mode 0700).
    :param max_bytes: a record larger than this is refused.
    """

    def __init__(self, directory: str, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    def path(self, instance_uuid: str) -> str:
        if not instance_uuid or "/" in instance_uuid or \
                instance_uuid.startswith("."):
            raise ValueError("bad instance uuid %r" % instance_uuid)
        return os.path.join(self.directory, instance_uuid + SUFFIX)

    def write(self, record: RunRecord) -> None:
        """Replace the instance's record atomically.

        :raises RunRecordError: too large, or the write failed (the old
            record, if any, is left as it was).
        """
        path = self.path(record.instance)
        text = record.to_json().encode("utf-8")
        if len(text) > self.max_bytes:
            raise exception.RunRecordError(
                path=path, instance=record.instance,
                reason="%d bytes is more than run_record_max_bytes (%d)"
                       % (len(text), self.max_bytes))
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix="." + record.instance,
                                       suffix=".tmp", dir=self.directory)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            self._sync_dir()
        except OSError as err:
            raise exception.RunRecordError(
                path=path, instance=record.instance,
                reason="cannot write it: %s" % err) from err

    def _sync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def remove(self, instance_uuid: str) -> None:
        """Drop the instance's record (no error if there is none)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(instance_uuid))

    def load(self, instance_uuid: str) -> RunRecord | None:
        """The instance's record; None if there is none or it is unreadable
        (then renamed to ``*.corrupt`` with an ERROR)."""
        path = self.path(instance_uuid)
        try:
            with open(path, "rb") as f:
                raw = f.read(self.max_bytes + 1)
        except FileNotFoundError:
            return None
        except OSError as err:
            LOG.error("Cannot read the redirect record %(path)s: %(err)s",
                      {"path": path, "err": err})
            return None
        try:
            if len(raw) > self.max_bytes:
                raise ValueError("larger than run_record_max_bytes (%d)"
                                 % self.max_bytes)
            record = RunRecord.from_json(raw.decode("utf-8"))
            if record.instance != instance_uuid:
                raise ValueError("it names instance %s" % record.instance)
        except (ValueError, TypeError, UnicodeDecodeError) as err:
            self._quarantine(path, instance_uuid, err)
            return None
        return record

    def _quarantine(self, path: str, instance_uuid: str,
                    err: BaseException) -> None:
        with contextlib.suppress(OSError):
            os.replace(path, path + CORRUPT_SUFFIX)
        LOG.error("The redirect record of instance %(instance)s is "
                  "unreadable (%(err)s); moved to %(path)s. If that "
                  "instance was being redirected when nova-compute stopped, "
                  "check by hand that it runs on one host and that no other "
                  "host keeps its allocation, port binding or volume "
                  "attachment.", {"instance": instance_uuid, "err": err,
                                  "path": path + CORRUPT_SUFFIX})

    def instances(self) -> list[str]:
        """UUIDs of the instances that have a record."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(n[:-len(SUFFIX)] for n in names
                      if n.endswith(SUFFIX) and not n.startswith("."))
