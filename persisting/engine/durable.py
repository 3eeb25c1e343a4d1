"""Make what Lance wrote to local disk durable: Lance never fsyncs a local commit.

A :class:`DirectorySnapshot` lists the dataset's files before a commit; after it,
:func:`fsync_new_files` fsyncs every file that appeared and each directory that gained one,
so a power loss cannot take away a commit whose WAL frames were already dropped.
:func:`fsync_ancestors` makes a new directory's own entry (and its new parents') durable.
"""

from __future__ import annotations

import errno
import os

__all__ = ["DirectorySnapshot", "fsync_ancestors", "fsync_path", "is_local", "local_path"]


def is_local(uri: str) -> bool:
    """True for a plain path or ``file://`` URI, False for object stores and memory://."""
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri.removeprefix("file://")


def fsync_path(path: str, *, missing_ok: bool = False) -> None:
    """fsync one file or directory by path (``missing_ok``: a file that vanished is fine)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_ancestors(path: str) -> None:
    """fsync every directory above ``path``, nearest first, up to its filesystem's mount point.

    A new directory is durable only once its entry in its parent is, and that parent may be
    new too (a store's root made with ``os.makedirs`` a moment earlier): fsyncing the whole
    chain makes ``path`` reachable after a power cut whichever of its ancestors were just
    created. Done once per new dataset or WAL open (a few ms), never per append.
    """
    d = os.path.abspath(path)
    while not os.path.ismount(d):
        d = os.path.dirname(d)
        try:
            fsync_path(d)
        except OSError as exc:
            # an ancestor this process may not open (a 0711 home directory) or a filesystem
            # that cannot fsync directories: its entries are its owner's to make durable
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EINVAL, errno.ENOTSUP):
                raise


class DirectorySnapshot:
    """The names under a local Lance dataset, to find what a commit added."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.names = self._list()

    def _list(self) -> set[str]:
        names: set[str] = set()
        if not os.path.isdir(self.root):
            return names
        stack = [""]
        while stack:
            rel = stack.pop()
            try:
                entries = os.scandir(os.path.join(self.root, rel))
            except FileNotFoundError:
                continue
            with entries:
                for e in entries:
                    name = os.path.join(rel, e.name)
                    if e.is_dir(follow_symlinks=False):
                        names.add(name + "/")
                        stack.append(name)
                    else:
                        names.add(name)
        return names

    def fsync_new_files(self) -> list[str]:
        """fsync what appeared since the snapshot, in an order a power cut cannot break; return
        the new files' paths relative to the root, sorted.

        Data first, manifest last: every new file's contents, then every directory that gained
        an entry (deepest first), with ``_versions`` (the manifest's directory, whose entry is
        the commit point) and the dataset root after everything else. A power cut then leaves
        either the old version or a new manifest whose data files are all durable.
        """
        after = self._list()
        new = after - self.names
        dirs = {""}
        files: list[str] = []
        for name in sorted(new):
            if name.endswith("/"):
                dirs.add(name.rstrip("/"))
            else:
                files.append(name)
            dirs.add(os.path.dirname(name.rstrip("/")))
        manifests = [f for f in files if f.startswith("_versions/")]
        # another writer's temporary or losing-commit files can vanish between listing and
        # fsync: they are not this commit's, so a missing file is skipped
        for name in files:
            if not name.startswith("_versions/"):
                fsync_path(os.path.join(self.root, name), missing_ok=True)
        hint = os.path.join(self.root, "_versions", "latest_version_hint.json")
        for d in sorted(dirs - {"", "_versions"}, key=lambda d: (-d.count("/"), d)):
            fsync_path(os.path.join(self.root, d))
        for name in manifests:
            fsync_path(os.path.join(self.root, name), missing_ok=True)
        if os.path.exists(hint) and "_versions/latest_version_hint.json" not in manifests:
            fsync_path(hint, missing_ok=True)  # rewritten in place by this commit, so not new
        if "_versions" in dirs or manifests:
            fsync_path(os.path.join(self.root, "_versions"))
        fsync_path(self.root)
        if not self.names:
            fsync_ancestors(self.root)  # the dataset directory itself is new, maybe its parents too
        self.names = after
        return files
