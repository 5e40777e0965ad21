"""Build (and cache) the lab's Linux guest: a Debian kernel plus an initramfs.

The lab needs a real Linux guest that boots fast under TCG, dirties a known
amount of memory at a known rate and prints liveness on its serial console.
A stock Debian kernel (the 8250 console is built in; the guest has no
devices, so no modules) and a busybox initramfs carrying our ``/init`` and
memory dirtier (``guest/``) do exactly that, with no disk image to manage.

Nothing is installed on the machine: the packages are fetched with
``apt-get download`` and unpacked with ``dpkg-deb -x``.  The result is
cached under ``/var/cache/nova-dcmigrate/guest/<key>`` (the root can be moved
with ``$DCMIGRATE_CACHE_DIR``), where the key hashes the guest sources and
the package versions, so changing ``dirty.c`` or a kernel update gives a new
image while repeated calls are free.  Builds happen in a temporary directory
that is renamed into place, so readers never see half an image.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import json
import os
from pathlib import Path
import re
import shutil
import stat
import subprocess
import tempfile
import time
from typing import Iterator

from oslo_log import log as logging

from nova_dcmigrate.lab import exception

LOG = logging.getLogger(__name__)

#: Guest sources shipped with the package.
GUEST_SRC_DIR = Path(__file__).resolve().parent / "guest"
#: Cache root used when neither an argument nor the environment names one.
DEFAULT_CACHE_ROOT = Path("/var/cache/nova-dcmigrate")
#: Environment variable that overrides :data:`DEFAULT_CACHE_ROOT`.
CACHE_ENV = "DCMIGRATE_CACHE_DIR"
#: Bump when the layout of the built image changes without a source change.
IMAGE_FORMAT = 1

KERNEL_META_PACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
_KERNEL_DEP_RE = re.compile(r"Depends:\s*(linux-image-[0-9][^\s]*-amd64)\s*$",
                            re.MULTILINE)
_APT_OPTS = ("-o", "APT::Sandbox::User=root", "-q")


@dataclasses.dataclass(frozen=True)
class GuestImage:
    """A built guest: boot it with ``-kernel kernel -initrd initrd``."""

    kernel: Path
    initrd: Path
    #: Cache key (also the name of the cache directory).
    key: str
    #: Debian package of the kernel, e.g. ``linux-image-6.1.0-57-amd64``.
    kernel_package: str
    #: That package's Debian version.
    kernel_version: str


def cache_root(cache_dir: Path | None = None) -> Path:
    """Return the cache root: the argument, else ``$DCMIGRATE_CACHE_DIR``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else DEFAULT_CACHE_ROOT


def build_guest_image(cache_dir: Path | None = None) -> GuestImage:
    """Return the cached guest image, building it first if needed.

    :param cache_dir: cache root; the image lives in ``<root>/guest/<key>``.
        Defaults to ``$DCMIGRATE_CACHE_DIR`` or ``/var/cache/nova-dcmigrate``.
    :raises ImageBuildError: when a package cannot be resolved, downloaded
        or unpacked, or the dirtier does not compile.
    :returns: the kernel and initrd paths.
    """
    guest_dir = cache_root(cache_dir) / "guest"
    kernel_pkg = _resolve_kernel_package()
    versions = _candidate_versions([kernel_pkg, BUSYBOX_PACKAGE])
    kernel_ver = versions[kernel_pkg]
    busybox_ver = versions[BUSYBOX_PACKAGE]
    key = _cache_key(kernel_pkg, kernel_ver, busybox_ver)
    final = guest_dir / key

    image = _load_cached(final)
    if image is not None:
        LOG.debug("Guest image %s is cached in %s", key, final)
        return image

    try:
        guest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise exception.ImageBuildError(step="create cache directory",
                                        reason=f"{guest_dir}: {err}")
    with _build_lock(guest_dir):
        # Another process may have finished the same build meanwhile.
        image = _load_cached(final)
        if image is not None:
            return image
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=guest_dir))
        try:
            _build(tmp, kernel_pkg, kernel_ver, busybox_ver, key)
            if final.exists():
                # Left over by an interrupted build of an older version.
                LOG.warning("Replacing incomplete guest image %s", final)
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    LOG.info("Built guest image %s (%s %s) in %.1f s: %s",
             key, kernel_pkg, kernel_ver, time.monotonic() - started, final)
    image = _load_cached(final)
    if image is None:
        raise exception.ImageBuildError(
            step="verify", reason=f"{final} is incomplete after the build")
    return image


# -- package resolution ------------------------------------------------------

def _run(step: str, argv: list[str], cwd: Path | None = None
         ) -> subprocess.CompletedProcess[str]:
    LOG.debug("Running %s", " ".join(argv))
    try:
        return subprocess.run(argv, cwd=cwd, check=True, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError as err:
        raise exception.ImageBuildError(step=step,
                                        reason=f"{argv[0]} not found: {err}")
    except subprocess.CalledProcessError as err:
        output = (err.stderr or err.stdout or "").strip()[-2000:]
        raise exception.ImageBuildError(
            step=step,
            reason=f"'{' '.join(argv)}' exited {err.returncode}: {output}")


_apt_updated = False


def _apt_update() -> None:
    global _apt_updated
    if _apt_updated:
        return
    LOG.info("Refreshing the apt package lists (apt-get update)")
    _run("apt-get update", ["apt-get", *_APT_OPTS, "update"])
    _apt_updated = True


def _resolve_kernel_package() -> str:
    """Versioned kernel package that ``linux-image-amd64`` depends on."""
    for attempt in range(2):
        try:
            out = _run("resolve kernel package",
                       ["apt-cache", "depends", KERNEL_META_PACKAGE]).stdout
            match = _KERNEL_DEP_RE.search(out)
            if match:
                return match.group(1)
            reason = f"no linux-image-<ver>-amd64 dependency in: {out.strip()}"
        except exception.ImageBuildError as err:
            reason = err.message
        if attempt == 0:
            LOG.info("Cannot resolve %s (%s); updating apt lists",
                     KERNEL_META_PACKAGE, reason)
            _apt_update()
    raise exception.ImageBuildError(step="resolve kernel package",
                                    reason=reason)


def _candidate_versions(packages: list[str]) -> dict[str, str]:
    """Candidate version of each package (one ``apt-cache policy`` run)."""
    reason = ""
    for attempt in range(2):
        try:
            out = _run("look up package versions",
                       ["apt-cache", "policy", *packages]).stdout
            versions: dict[str, str] = {}
            current = None
            for line in out.splitlines():
                if line and not line[0].isspace() and line.endswith(":"):
                    current = line[:-1]
                elif current and line.strip().startswith("Candidate:"):
                    version = line.split(":", 1)[1].strip()
                    if version != "(none)":
                        versions[current] = version
            missing = [p for p in packages if p not in versions]
            if not missing:
                return versions
            reason = f"no installable version of {', '.join(missing)}"
        except exception.ImageBuildError as err:
            reason = err.message
        if attempt == 0:
            _apt_update()
    raise exception.ImageBuildError(step="look up package versions",
                                    reason=reason)


def _download(packages: list[str], dest: Path) -> list[Path]:
    argv = ["apt-get", *_APT_OPTS, "download", *packages]
    try:
        _run("apt-get download", argv, cwd=dest)
    except exception.ImageBuildError as err:
        # Stale lists name files the mirror no longer has: refresh once.
        LOG.info("apt-get download failed (%s); updating apt lists",
                 err.message)
        _apt_update()
        _run("apt-get download", argv, cwd=dest)
    debs = sorted(dest.glob("*.deb"))
    if len(debs) != len(packages):
        raise exception.ImageBuildError(
            step="apt-get download",
            reason=f"expected {len(packages)} .deb files, got "
                   f"{[d.name for d in debs]}")
    return debs


# -- cache -------------------------------------------------------------------

def _guest_sources() -> dict[str, bytes]:
    sources = {}
    for name in ("dirty.c", "init"):
        path = GUEST_SRC_DIR / name
        try:
            sources[name] = path.read_bytes()
        except OSError as err:
            raise exception.ImageBuildError(step="read guest sources",
                                            reason=f"{path}: {err}")
    return sources


def _cache_key(kernel_pkg: str, kernel_ver: str, busybox_ver: str) -> str:
    digest = hashlib.sha256()
    digest.update(f"format={IMAGE_FORMAT}\n".encode())
    digest.update(f"kernel={kernel_pkg}={kernel_ver}\n".encode())
    digest.update(f"busybox={busybox_ver}\n".encode())
    for name, data in sorted(_guest_sources().items()):
        digest.update(f"{name}:{len(data)}\n".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


def _load_cached(directory: Path) -> GuestImage | None:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    kernel = directory / "vmlinuz"
    initrd = directory / "initrd.gz"
    if not (kernel.is_file() and initrd.is_file()):
        return None
    return GuestImage(kernel=kernel, initrd=initrd, key=manifest["key"],
                      kernel_package=manifest["kernel_package"],
                      kernel_version=manifest["kernel_version"])


@contextlib.contextmanager
def _build_lock(guest_dir: Path) -> Iterator[None]:
    with open(guest_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -- build -------------------------------------------------------------------

def _build(out: Path, kernel_pkg: str, kernel_ver: str, busybox_ver: str,
           key: str) -> None:
    work = out / "work"
    debs = work / "debs"
    debs.mkdir(parents=True)
    started = time.monotonic()
    _download([f"{kernel_pkg}={kernel_ver}",
               f"{BUSYBOX_PACKAGE}={busybox_ver}"], debs)
    LOG.info("Downloaded %s and %s in %.1f s", kernel_pkg, BUSYBOX_PACKAGE,
             time.monotonic() - started)

    root = work / "root"
    for deb in sorted(debs.glob("*.deb")):
        _run(f"unpack {deb.name}", ["dpkg-deb", "-x", str(deb), str(root)])

    abi = kernel_pkg[len("linux-image-"):]
    vmlinuz = root / "boot" / f"vmlinuz-{abi}"
    busybox = root / "bin" / "busybox"
    for path in (vmlinuz, busybox):
        if not path.is_file():
            raise exception.ImageBuildError(
                step="unpack packages", reason=f"{path} is missing")

    sources = _guest_sources()
    dirty_c = work / "dirty.c"
    dirty_c.write_bytes(sources["dirty.c"])
    dirty = work / "dirty"
    _run("compile dirty.c", ["gcc", "-O2", "-static", "-Wall", "-o",
                             str(dirty), str(dirty_c)])

    entries = [
        _Entry.directory("bin"), _Entry.directory("dev"),
        _Entry.char_device("dev/console", 5, 1),
        _Entry.directory("proc"), _Entry.directory("sys"),
        _Entry.directory("tmp", 0o1777), _Entry.directory("root", 0o700),
        _Entry.file("init", sources["init"], 0o755),
        _Entry.file("bin/busybox", busybox.read_bytes(), 0o755),
        _Entry.symlink("bin/sh", "busybox"),
        _Entry.file("bin/dirty", dirty.read_bytes(), 0o755),
    ]
    _write_initramfs(entries, out / "initrd.gz")
    shutil.copyfile(vmlinuz, out / "vmlinuz")
    shutil.rmtree(work)
    manifest = {"key": key, "format": IMAGE_FORMAT,
                "kernel_package": kernel_pkg, "kernel_version": kernel_ver,
                "busybox_version": busybox_ver,
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    # Written last: its presence marks the build complete.
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    os.chmod(out, 0o755)


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One member of a newc cpio archive."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)

    @classmethod
    def directory(cls, name: str, perm: int = 0o755) -> _Entry:
        return cls(name, stat.S_IFDIR | perm)

    @classmethod
    def file(cls, name: str, data: bytes, perm: int = 0o644) -> _Entry:
        return cls(name, stat.S_IFREG | perm, data)

    @classmethod
    def symlink(cls, name: str, target: str) -> _Entry:
        return cls(name, stat.S_IFLNK | 0o777, target.encode())

    @classmethod
    def char_device(cls, name: str, major: int, minor: int) -> _Entry:
        return cls(name, stat.S_IFCHR | 0o600, rdev=(major, minor))


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _write_initramfs(entries: list[_Entry], dest: Path) -> None:
    """Write a gzip'd newc cpio archive.

    Written in Python rather than with cpio(1) so that device nodes need no
    mknod and the archive is byte-for-byte reproducible (fixed owners and
    timestamps).
    """
    trailer = _Entry("TRAILER!!!", 0)
    # No file name or timestamp in the gzip header either.
    with open(dest, "wb") as raw, gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, compresslevel=6,
            mtime=0) as out:
        for ino, entry in enumerate([*entries, trailer], start=1):
            name = entry.name.encode() + b"\0"
            is_trailer = entry is trailer
            fields = (
                0 if is_trailer else ino, entry.mode, 0, 0,
                2 if stat.S_ISDIR(entry.mode) else 1, 0, len(entry.data),
                0, 0, entry.rdev[0], entry.rdev[1], len(name), 0)
            header = b"070701" + b"".join(b"%08X" % f for f in fields)
            out.write(header + name + _pad4(len(header) + len(name)))
            out.write(entry.data + _pad4(len(entry.data)))
