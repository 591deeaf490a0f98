"""Output folders of the stages: one run at a time, one stage per folder, and ``--resume`` only of the same run.

- :class:`OutputLock`: an exclusive ``fcntl.flock`` on the folder itself and on ``OUT/.lock`` (which holds the
  holder's PID), taken before a stage checks or writes anything. A second run into the folder fails at once,
  naming the folder and the holder's PID, even when the live ``.lock`` was deleted. The kernel drops the locks
  when their process ends, however it ends, so a folder is never locked by a killed run: the next run takes it
  over. ``.lock`` is opened without following links, must be a regular file, and is written only by the run that
  holds it; it is removed on every exit (SIGTERM included) and a run that fails before writing anything leaves no
  folder behind.
- ``OUT/run.json`` (:func:`run_record`, :func:`record_run`): the stage that owns the folder, the options that
  determine its results and the identity (size, sha256) of every input checkpoint or parameters file. Another
  stage refuses the folder (:func:`check_owner`); ``--resume`` refuses a run that differs in any of them
  (:func:`check_resume`), naming what differs.
- :func:`claim_folder`: a folder that holds a finished (or, for training and inference, a started) run of the
  stage is continued only with ``--resume`` and the same options, replaced only with ``--overwrite`` (its files
  removed first), and refused otherwise.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import stat
import threading
from pathlib import Path
from typing import Any, Collection, Mapping

from ..files import atomic_write_json

__all__ = ["LOCK_NAME", "RECORD_NAME", "OutputLock", "file_identity", "run_record", "read_record", "folder_owner",
           "check_owner", "check_resume", "claim_folder", "clear_folder", "record_run"]

LOCK_NAME = ".lock"
RECORD_NAME = "run.json"


def _holder(fd: int) -> str:
    """The PID written into a lock file, or ``unknown`` (empty while its holder is starting)."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode(errors="replace").strip()
    return text if text.isdigit() else "unknown"


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` (not followed if a link) still names the file open as ``fd``."""
    try:
        return os.path.samestat(os.lstat(path), os.fstat(fd))
    except FileNotFoundError:
        return False


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """Exclusive lock on the output folder ``folder`` (named ``flag`` in messages); a context manager.

    ``acquire`` creates the folder when needed and raises ValueError when another process holds the lock or the
    folder cannot be written. ``release`` removes the lock file, and the folders ``acquire`` created when they
    are still empty.
    """

    def __init__(self, folder: str | os.PathLike, flag: str = "--out"):
        self.folder, self.flag = Path(folder), flag
        self.path = self.folder / LOCK_NAME
        self.taken_over: str | None = None  # PID of a dead process whose lock file this lock took over
        self._fd: int | None = None
        self._folder_fd: int | None = None
        self._owner: int | None = None
        self._previous_handler: Any = None
        self._created: list[Path] = []

    def _make_folders(self) -> None:
        missing = []
        for folder in (self.folder, *self.folder.parents):
            if folder.is_dir():
                break
            missing.append(folder)
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                if not folder.is_dir():
                    where = "" if folder == self.folder else f": {folder}"
                    raise ValueError(f"{self.flag} {self.folder}{where} is a file, not a folder") from None
                continue  # made by another process meanwhile
            except OSError as error:
                raise ValueError(f"{self.flag} {self.folder}: cannot create {folder} ({error.strerror})") from None
            self._created.append(folder)

    def acquire(self) -> "OutputLock":
        for _ in range(20):  # a folder or lock file removed by a finishing holder meanwhile: try again
            self._make_folders()
            try:
                folder_fd = self._lock_folder()
                if folder_fd is None:
                    continue
                try:
                    fd = self._lock_file()
                except BaseException:
                    os.close(folder_fd)
                    raise
            except ValueError:
                self._remove_created()
                raise
            if fd is None:
                os.close(folder_fd)
                continue
            previous = _holder(fd)
            if previous != "unknown" and int(previous) != os.getpid():
                self.taken_over = previous  # its process died without releasing (the kernel released the flock)
            os.ftruncate(fd, 0)  # only now: this process holds the lock
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._fd, self._folder_fd, self._owner = fd, folder_fd, os.getpid()
            self._stop_on_sigterm()
            return self
        raise ValueError(f"{self.flag} {self.folder}: could not lock the folder (it keeps being removed)")

    def _in_use(self, holder: str) -> ValueError:
        alive = holder == "unknown" or _alive(holder)
        return ValueError(
            f"{self.flag} {self.folder} is in use by another run (process {holder}"
            f"{'' if alive else ', ended: its data-loading workers are still stopping'}); wait for it to "
            f"finish or choose another {self.flag}")

    def _not_a_lock(self, what: str) -> ValueError:
        return ValueError(f"{self.flag} {self.folder}: {self.path} is {what}, not a lock file; remove it or choose "
                          f"another {self.flag}")

    def _read_holder(self) -> str:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return "unknown"
        try:
            return _holder(fd) if stat.S_ISREG(os.fstat(fd).st_mode) else "unknown"
        finally:
            os.close(fd)

    def _lock_folder(self) -> int | None:
        """An ``flock`` on the folder itself, so that removing a live ``.lock`` lets no second run in: its fd, or
        None when the folder was replaced meanwhile. Where folders cannot be locked (``flock`` emulated on some
        network file systems), the lock file alone guards the folder."""
        try:
            fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise ValueError(f"{self.flag} {self.folder}: cannot open the folder ({error.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._in_use(self._read_holder()) from None
        except OSError as error:
            if error.errno not in (errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                os.close(fd)
                raise ValueError(f"{self.flag} {self.folder}: cannot lock the folder ({error.strerror})") from None
        if not _names(self.folder, fd):
            os.close(fd)
            return None
        return fd

    def _lock_file(self) -> int | None:
        """The fd of ``.lock``, opened without following a link and ``flock``-ed; None when it was removed
        meanwhile. Its content is left as it was (another run may hold it)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.EISDIR):
                raise self._not_a_lock("a symbolic link" if error.errno == errno.ELOOP else "a folder") from None
            raise ValueError(f"{self.flag} {self.folder}: cannot write in this folder ({error.strerror})") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise self._not_a_lock("not a regular file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise self._in_use(holder) from None
        if not _names(self.path, fd):  # its previous holder removed this file after we opened it
            os.close(fd)
            return None
        return fd

    def _stop_on_sigterm(self) -> None:
        """In the main thread, turn SIGTERM into SystemExit while the lock is held, so that ``release`` runs (a
        handler someone else installed is kept)."""
        self._previous_handler = None
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._previous_handler = signal.signal(signal.SIGTERM, _exit_on_sigterm)

    def _remove_created(self) -> None:
        for folder in reversed(self._created):
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (outputs, or another run's lock): keep it and its parents
        self._created = []

    def release(self) -> None:
        if self._fd is None or self._owner != os.getpid():  # a forked child does not release its parent's lock
            return
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
        try:
            if _names(self.path, self._fd):
                os.unlink(self.path)  # while still holding it: a waiting process then retries on a new file
        finally:
            os.close(self._fd)
            self._fd = None
        self._remove_created()
        os.close(self._folder_fd)  # last: the folder is free once its lock file is gone

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """``path`` (resolved), size and sha256 of a file (read in 1 MiB blocks)."""
    path = Path(path)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path.resolve()), "size": path.stat().st_size, "sha256": digest.hexdigest()}


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def run_record(stage: str, options: Mapping[str, Any], inputs: Mapping[str, Any] | None = None,
               paths: Collection[str] = ()) -> dict[str, Any]:
    """The content of ``run.json``: ``stage``, ``options`` (those in ``paths`` resolved to absolute paths) and
    ``inputs`` (flag -> file, each recorded by :func:`file_identity`; None entries are left out)."""
    def resolved(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, (list, tuple)):
            return [str(Path(v).resolve()) for v in value]
        return str(Path(value).resolve())

    options = {key: resolved(value) if key in paths else value for key, value in options.items()}
    files = {flag: file_identity(path) for flag, path in (inputs or {}).items() if path is not None}
    return {"stage": stage, "options": _plain(options), "inputs": files}


def read_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    """``folder/run.json``, or None when there is none; ValueError when it is damaged."""
    path = Path(folder) / RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable ({error}); move the folder away or choose another --out") from None
    if not isinstance(record, dict) or not isinstance(record.get("stage"), str):
        raise ValueError(f"{path}: not a run record (no 'stage'); move the folder away or choose another --out")
    return record


def folder_owner(folder: str | os.PathLike) -> str | None:
    """The stage that wrote ``folder`` (its run.json's), or None."""
    folder = Path(folder)
    record = read_record(folder) if folder.is_dir() else None
    return None if record is None else record["stage"]


def _contents(folder: Path) -> list[str]:
    """Names of what ``folder`` holds besides the lock, sorted (empty when it is not a folder)."""
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK_NAME) if folder.is_dir() else []


def check_owner(folder: str | os.PathLike, stage: str, flag: str = "--out") -> None:
    """ValueError when ``folder`` belongs to another stage, or holds files but no run.json (no stage wrote them)."""
    folder = Path(folder)
    owner = folder_owner(folder)
    if owner is not None and owner != stage:
        raise ValueError(f"{flag} {folder} holds the outputs of the {owner} stage; the {stage} stage does not write "
                         f"into another stage's folder: choose another {flag}")
    foreign = _contents(folder) if owner is None else []
    if foreign:
        raise ValueError(f"{flag} {folder} holds files that no stage wrote ({', '.join(foreign[:5])}"
                         f"{', ...' if len(foreign) > 5 else ''}; no {RECORD_NAME}); choose a new or empty {flag}")


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def check_resume(folder: str | os.PathLike, record: Mapping[str, Any], may_differ: Collection[str] = (),
                 flag: str = "--resume") -> None:
    """ValueError, starting with ``flag``, naming every difference between ``record`` and the run recorded in
    ``folder`` (nothing to check when the folder holds no run).

    Options in ``may_differ``, and options the stored record does not know (added by a later version), may
    differ. A folder with files but without run.json cannot be checked and is refused.
    """
    folder = Path(folder)
    stored = read_record(folder)
    if stored is None:
        if _contents(folder):
            raise ValueError(f"{flag}: {folder} has files but no {RECORD_NAME}, so nothing shows that this run "
                             f"continues the same one; choose a new --out")
        return
    differences = []
    old_options, new_options = stored.get("options", {}), record["options"]
    for key in sorted(set(old_options) & set(new_options)):
        if key not in may_differ and old_options[key] != new_options[key]:
            differences.append(f"{_flag(key)} {_show(old_options[key])} (now {_show(new_options[key])})")
    old_inputs, new_inputs = stored.get("inputs", {}), record["inputs"]
    for option in sorted(set(old_inputs) | set(new_inputs)):
        old, new = old_inputs.get(option), new_inputs.get(option)
        if old is None or new is None:
            differences.append(f"{option} {'none' if old is None else old['path']} (now "
                               f"{'none' if new is None else new['path']})")
        elif (old.get("size"), old.get("sha256")) != (new["size"], new["sha256"]):
            differences.append(f"{option} {old['path']} sha256 {str(old.get('sha256'))[:12]} (now {new['path']} "
                               f"sha256 {new['sha256'][:12]}: another file, or changed since)")
    if differences:
        raise ValueError(f"{flag}: {folder / RECORD_NAME} records a run with other inputs: {'; '.join(differences)}. "
                         f"Give the same inputs to continue it, or choose a new --out")


def _show(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value)) if len(value) <= 8 else f"[{len(value)} values]"
    return str(value)


def claim_folder(folder: str | os.PathLike, record: Mapping[str, Any], holds_run: bool, resume: bool,
                 overwrite: bool, may_differ: Collection[str] = ()) -> None:
    """Check that the run of ``record`` may write into ``folder`` (the lock holder calls it once every input is
    checked, before writing): ``holds_run`` says whether the folder holds results of this stage that a new run
    would replace. Those are continued only with ``resume`` (:func:`check_resume`: the same options but
    ``may_differ``), replaced only with ``overwrite`` (the folder's files are removed now), else ValueError."""
    folder = Path(folder)
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    if resume:
        check_resume(folder, record, may_differ=may_differ)
    elif overwrite:
        clear_folder(folder)
    elif holds_run:
        raise ValueError(f"--out {folder} already holds a run of the {record['stage']} stage; pass --resume to "
                         f"continue it (with the same options), --overwrite to replace it, or choose another --out")


def clear_folder(folder: str | os.PathLike) -> None:
    """Remove everything in ``folder`` but its lock file (``--overwrite``; only the lock holder may call it)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name != LOCK_NAME:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def record_run(folder: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write ``folder/run.json`` and remove the temporary files of writes interrupted by a killed run (only the
    lock holder may call it, before the stage writes its outputs)."""
    folder = Path(folder)
    path = atomic_write_json(dict(record), folder / RECORD_NAME)
    for stale in _stale_temporaries(folder):
        stale.unlink()
    return path


def _stale_temporaries(folder: Path) -> list[Path]:
    """``.*.tmp`` files of :func:`~..files.atomic_write` in ``folder`` and its sub-folders, except sub-folders
    that are other runs' folders (with their own run.json or lock)."""
    found = []
    for entry in folder.iterdir():
        if entry.is_dir() and not any((entry / name).exists() for name in (RECORD_NAME, LOCK_NAME)):
            found.extend(_stale_temporaries(entry))
        elif entry.is_file() and entry.name.startswith(".") and entry.name.endswith(".tmp"):
            found.append(entry)
    return found
