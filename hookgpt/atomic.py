"""Atomic writes: nothing hookgpt writes is ever half-written, a file or a whole directory.

**A file.** `atomic_write(path)` hands out a temporary file in the same folder; when the `with`
block ends the file is flushed to disk (fsync) and moved over `path` with `os.replace`, which is
atomic on POSIX. If the block raises, the temporary file is removed and `path` is untouched.

**A directory** (a model checkpoint is several files that only make sense together).
`atomic_directory(path)` hands out an empty temporary directory next to `path`; when the block
ends, every file in it is fsynced and the two directories are swapped:

1. on Linux, in one step: `renameat2(RENAME_EXCHANGE)` exchanges the two names atomically, so
   `path` holds the old contents until the instant it holds the new ones; the old contents
   (now under the temporary name) are then deleted;
2. elsewhere, in two renames: `path` -> a backup name, the new directory -> `path`, then the
   backup is deleted. Between the two renames `path` is missing; `recover_directory(path)`
   (run by every later save and by loading) puts the backup back if a kill struck right there.

A process killed inside `atomic_write` leaves its temporary file (`.out.bin.pid1234-x7q.tmp`);
`remove_dead_temporaries(folder)` deletes those of processes that are gone.

Temporary directory names carry the writer's process id (`.ckpt.tmp-1234-x7q`, `.ckpt.old-1234-x7q`), so a
later save removes those of a process that died (a kill never leaves hundreds of MB behind) and
leaves those of a save still running alone. Entries of the old directory that the new contents
do not replace (say a `notes.txt`) are carried over, as hard links.

A reader, or a process killed at any moment, sees the old file/directory or the new one,
complete, never a mix.
"""

import contextlib
import ctypes
import errno
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _fsync_path(path: Path) -> None:
    """Flush a file's or a directory's contents (for a directory: its entries) to disk."""
    flags = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if path.is_dir() else os.O_RDONLY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems cannot fsync a directory; the data itself was synced
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _make_parents(path: Path) -> None:
    """Create the folders above `path`; a file in the way is named as such (mkdir alone would
    say "File exists")."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"cannot write {str(path)!r}: {str(parent)!r} is a file, not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)


def _naming_the_target(error: OSError, target: Path) -> OSError:
    """The same kind of OSError, naming the file or directory the user asked for rather than the
    temporary name the error happened on."""
    if error.errno is None or str(target) in str(error):
        return error
    return type(error)(error.errno, f"cannot write {str(target)!r}: {error.strerror}")


# ---------------------------------------------------------------------------------------------
# One file
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[Path]:
    """`with atomic_write("out.bin") as tmp: write to tmp` -> `out.bin` appears whole, or not at all."""
    path = Path(path)
    try:
        _make_parents(path)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.pid{os.getpid()}-", suffix=".tmp")
    except OSError as e:
        raise _naming_the_target(e, path) from e
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync_path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give it a normal file's mode
        os.replace(tmp, path)
        _fsync_path(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _naming_the_target(e, path) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_dead_temporaries(directory: PathLike) -> list[Path]:
    """Delete the temporary files `atomic_write` left in `directory` when its process was killed
    (`.name.pid1234-….tmp` of a process that no longer runs); returns what was removed. Run it
    once before writing many files into a folder (as `analyses.collect` does)."""
    removed = []
    for path in Path(directory).glob(".*.pid*-*.tmp"):
        match = re.match(r"^\..+\.pid(\d+)-[^/]*\.tmp$", path.name)
        if match and not _process_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# A whole directory
# ---------------------------------------------------------------------------------------------

_RENAME_EXCHANGE = 2  # from <linux/fs.h>
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names `a` and `b` in one atomic step (Linux's renameat2). False where the system
    or the filesystem cannot; the caller then renames twice."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # a C library without renameat2 (glibc < 2.28)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # not supported here
        return False
    raise OSError(code, os.strerror(code), str(b))


def _temporary_names(directory: Path) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(directory.name)}\.(tmp|old)-(\d+)-")


def recover_directory(directory: PathLike) -> None:
    """Finish or undo what a killed `atomic_directory` left next to `directory`.

    A backup (`.name.old-PID-…`) of a dead process goes back to `directory` if that is missing
    (the kill came between the two renames), else it is deleted; its half-written new
    directory (`.name.tmp-PID-…`) is deleted. Temporaries of live processes are left alone.
    """
    directory = Path(directory).expanduser()
    pattern = _temporary_names(directory)
    try:
        siblings = sorted(directory.parent.iterdir())
    except OSError:
        return
    for sibling in siblings:
        match = pattern.match(sibling.name)
        if not match or _process_alive(int(match.group(2))):
            continue
        if match.group(1) == "old" and not os.path.lexists(directory):
            os.rename(sibling, directory)
        else:
            shutil.rmtree(sibling, ignore_errors=True)


def _carry_over(old: Path, new: Path, replaced: Callable[[str], bool]) -> None:
    """Hard-link (or copy) into `new` the entries of `old` it does not replace."""
    for entry in sorted(old.iterdir()):
        if replaced(entry.name) or (new / entry.name).exists():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, new / entry.name)


def _link_or_copy(src: PathLike, dst: PathLike) -> None:
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def atomic_directory(directory: PathLike, replaced: Optional[Callable[[str], bool]] = None) -> Iterator[Path]:
    """`with atomic_directory("ckpt") as tmp: write files into tmp` -> `ckpt` holds exactly the
    new files (plus the old entries for which `replaced(name)` is False), swapped in whole.

    `replaced` says which names of an existing directory belong to what is being written (for a
    model: its config, weights and tokenizer files); by default every old entry is dropped.
    """
    directory = Path(directory).expanduser()
    if directory.is_symlink():
        directory = directory.resolve()
    replaced = replaced or (lambda name: True)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"cannot save into {str(directory)!r}: it is a file, not a directory")
    try:
        _make_parents(directory)
        recover_directory(directory)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-{os.getpid()}-", dir=directory.parent))
    except OSError as e:
        raise _naming_the_target(e, directory) from e
    backup: Optional[Path] = None
    try:
        yield tmp
        existed = directory.is_dir()
        if existed:
            _carry_over(directory, tmp, replaced)
        for path in sorted(tmp.rglob("*")):
            if path.is_file() and not path.is_symlink():
                _fsync_path(path)
        os.chmod(tmp, (directory.stat().st_mode & 0o7777) if existed else 0o777 & ~_umask())
        _fsync_path(tmp)
        if not existed:
            os.rename(tmp, directory)
        elif _exchange(tmp, directory):
            backup, tmp = tmp, None  # the old contents now live under the temporary name
        else:
            backup = Path(tmp.parent / tmp.name.replace(".tmp-", ".old-", 1))
            os.rename(directory, backup)
            os.rename(tmp, directory)
        tmp = None
        _fsync_path(directory.parent)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except OSError as e:
        _undo(directory, tmp, backup)
        raise _naming_the_target(e, directory) from e
    except BaseException:
        _undo(directory, tmp, backup)
        raise


def _undo(directory: Path, tmp: Optional[Path], backup: Optional[Path]) -> None:
    """After a failed swap: the old directory back in place (or, if the swap itself was done, the
    old contents deleted), the new one gone."""
    if backup is not None and backup.exists():
        if os.path.lexists(directory):
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.rename(backup, directory)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
