"""Make what Lance wrote to local disk durable: Lance never fsyncs a local commit.

A :class:`DirectorySnapshot` lists the dataset's files before a commit; after it,
:func:`fsync_new_files` fsyncs every file that appeared and each directory that gained one,
so a power loss cannot take away a commit whose WAL frames were already dropped.
"""

from __future__ import annotations

import os

__all__ = ["DirectorySnapshot", "fsync_path", "is_local", "local_path"]



def is_local(uri: str) -> bool:
    """True for a plain path or ``file://`` URI, False for object stores and memory://."""
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri.removeprefix("file://")


def fsync_path(path: str) -> None:
    """fsync one file or directory by path."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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

    def fsync_new_files(self) -> int:
        """fsync files and directories added since the snapshot; return how many files."""
        after = self._list()
        new = after - self.names
        dirs = {""}
        count = 0
        for name in sorted(new):
            if name.endswith("/"):
                dirs.add(name.rstrip("/"))
            else:
                fsync_path(os.path.join(self.root, name))
                count += 1
            dirs.add(os.path.dirname(name.rstrip("/")))
        hint = os.path.join(self.root, "_versions", "latest_version_hint.json")
        if os.path.exists(hint):
            fsync_path(hint)
        for d in sorted(dirs, key=len, reverse=True):
            fsync_path(os.path.join(self.root, d) if d else self.root)
        parent = os.path.dirname(os.path.abspath(self.root))
        if "" in dirs and not self.names:
            fsync_path(parent)  # the dataset directory itself is new
        self.names = after
        return count
