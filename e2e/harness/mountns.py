"""Run a command with directories bound at absolute paths, in a private mount namespace.

    python -I mountns.py '{"/abs/mount": "/local/dir"}' STASH_DIR ARGV...

The pod runner starts a pod's process through this file when the pod mounts volumes at
absolute paths (``/models``, ``/etc/clawdbot``): it enters a new mount namespace (and a user
namespace when not root), binds each local directory at its mount path, then execs ARGV, so
the pid stays the same and stopping the process group works as without it. A mount path
whose parent doesn't exist gets a tmpfs over its nearest existing ancestor, with that
ancestor's entries bound back into it (the originals are first bound under STASH_DIR).

mount(2) and unshare(2) are called directly through ctypes: the mount command would also
write its own bookkeeping under /run on the host. The file runs with ``python -I`` (isolated:
no site-packages, no project imports), so it uses the standard library only.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from typing import NoReturn

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

libc = ctypes.CDLL(None, use_errno=True)


def fail(what: str) -> NoReturn:
    err = ctypes.get_errno()
    sys.exit(
        f"podrunner: {what}: {os.strerror(err)} (the pod's files at their absolute paths "
        "need root or unprivileged user namespaces)"
    )


def _enc(value: str | None) -> bytes | None:
    return value.encode() if value is not None else None


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    if libc.mount(_enc(source), _enc(target), _enc(fstype), flags, _enc(data)) != 0:
        fail(f"mount {target}")


def enter_namespace() -> None:
    """A private mount namespace; as a non-root user, inside a user namespace mapping us to 0."""
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(CLONE_NEWNS | (CLONE_NEWUSER if uid else 0)) != 0:
        fail("unshare")
    if uid:
        for path, text in (
            ("setgroups", "deny"),
            ("uid_map", f"0 {uid} 1"),
            ("gid_map", f"0 {gid} 1"),
        ):
            with open(f"/proc/self/{path}", "w") as f:
                f.write(text)
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def make_mount_point(real: str, stash_root: str) -> None:
    """Create `real` when its parent folders are missing, without writing to the host."""
    ancestor = real
    while not os.path.isdir(ancestor):
        ancestor = os.path.dirname(ancestor)
    if ancestor == real:
        return
    if ancestor == "/":
        sys.exit(f"podrunner: won't lay a tmpfs over / to make {real}")
    stash = os.path.join(stash_root, str(len(os.listdir(stash_root))))
    os.mkdir(stash)
    mount(ancestor, stash, None, MS_BIND | MS_REC)
    mount("tmpfs", ancestor, "tmpfs", 0, "mode=755")
    for entry in os.listdir(stash):
        old, new = os.path.join(stash, entry), os.path.join(ancestor, entry)
        if os.path.islink(old):
            os.symlink(os.readlink(old), new)
            continue
        if os.path.isdir(old):
            os.mkdir(new)
        else:
            open(new, "w").close()
        mount(old, new, None, MS_BIND | MS_REC)
    os.makedirs(real)


def main(argv: list[str]) -> NoReturn:
    if len(argv) < 4:
        sys.exit("usage: mountns.py BINDS_JSON STASH_DIR ARGV...")
    binds: dict[str, str] = json.loads(argv[1])
    stash_root = argv[2]
    enter_namespace()
    for target, source in binds.items():
        real = os.path.realpath(target)
        make_mount_point(real, stash_root)
        mount(source, real, None, MS_BIND | MS_REC)
    os.execvp(argv[3], argv[3:])


if __name__ == "__main__":
    main(sys.argv)
