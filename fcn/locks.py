"""The file locks of a sweep (a cell's, a feature store build's, the MLflow store's set-up), taken in one place so
that a filesystem whose flock does not lock across nodes stops with one line and a way out instead of failing as
"held by another process" or, worse, locking only on the node that took it.

Parallel filesystems differ: Lustre mounted without `-o flock` answers flock with ENOSYS (and `-o localflock` locks
per node only), NFS with `local_lock=flock`/`all` locks per node only, some FUSE filesystems answer EOPNOTSUPP.
Where a sweep's out dir or data dir sits on such a mount, env FCN_LOCK_DIR names a directory on a filesystem whose
flock works across the nodes (an NFSv4 home, a Lustre mount with `-o flock`): each lock is then taken on a file there,
named after the path it guards. FCN_LOCK_DIR must be the same path on every node of the sweep.

Test hook: env FCN_TEST_FLOCK_ENOSYS=<directory> makes every lock under that directory fail as Lustre's does
(OSError ENOSYS), with no special mount needed (tests/test_cluster_plumbing.py, tests/test_multinode.py).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from pathlib import Path

from fcn.errors import UserError

# flock's answers on a filesystem that does not support it (rather than "held": EWOULDBLOCK / EAGAIN)
UNSUPPORTED = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOLCK, errno.EINVAL}
# mount options under which flock succeeds but locks only on the node that took it
NODE_LOCAL = {"lustre": ("localflock",), "nfs": ("local_lock=flock", "local_lock=all")}


def lock_path(path: Path) -> Path:
    """Where the lock guarding `path` is taken: `path` itself, or its stand-in under FCN_LOCK_DIR."""
    where = os.environ.get("FCN_LOCK_DIR", "")
    if not where:
        return Path(path)
    d = Path(where)
    d.mkdir(parents=True, exist_ok=True)
    absolute = str(Path(path).resolve())
    return d / f"{hashlib.sha256(absolute.encode()).hexdigest()[:16]}-{Path(path).name}"


def _mount_of(path: Path, mountinfo: str) -> tuple[str, str]:
    """(filesystem type, mount options) of the mount holding `path`, from /proc/self/mountinfo's text."""
    best, fstype, opts = "", "", ""
    target = str(Path(path).resolve())
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 6:
            continue
        point = fields[4].replace("\\040", " ")
        after = line.split(" - ", 1)[1].split()
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, fstype = point, after[0]
            opts = ",".join([fields[5], *(after[2:3])])
    return fstype, opts


def node_local(path: Path, mountinfo: str | None = None) -> str:
    """Why flock on `path` would lock on this node only ('' when it locks across nodes, as far as the mount says)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return ""
    fstype, opts = _mount_of(path, mountinfo)
    kind = "nfs" if fstype.startswith("nfs") else fstype
    for opt in NODE_LOCAL.get(kind, ()):
        if opt in opts.split(","):
            return f"{fstype} mounted with {opt} (flock locks on one node only)"
    return ""


def _refuse(path: Path, why: str) -> UserError:
    return UserError(
        f"cannot lock {path}: {why}, so jobs on several nodes could train one cell or build one store at once; "
        f"set FCN_LOCK_DIR to a directory, the same on every node, on a filesystem whose flock works across the "
        f"nodes (or mount this one with -o flock)"
    )


def _flock(f, flags: int) -> None:
    hook = os.environ.get("FCN_TEST_FLOCK_ENOSYS", "")  # the file really locked: under FCN_LOCK_DIR, if set
    if hook and str(Path(f.name).resolve()).startswith(str(Path(hook).resolve())):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
    fcntl.flock(f, flags)


def try_lock(f, path: Path) -> bool:
    """Take an exclusive flock on the open file `f` (at `path`) without waiting: True if taken, False if another
    process holds it; a filesystem that cannot lock across nodes raises one line (UserError)."""
    try:
        _flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if e.errno in UNSUPPORTED:
            raise _refuse(path, f"flock is not supported there ({errno.errorcode.get(e.errno, e.errno)})") from None
        raise
    why = node_local(path) if not os.environ.get("FCN_LOCK_DIR") else ""
    if why:
        fcntl.flock(f, fcntl.LOCK_UN)
        raise _refuse(path, why)
    return True


def lock(f, path: Path) -> None:
    """Take an exclusive flock on `f`, waiting as long as it takes (try_lock's refusals apply)."""
    if not try_lock(f, path):
        _flock(f, fcntl.LOCK_EX)
