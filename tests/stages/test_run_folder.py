"""The output folder's lock and run record: one holder at a time, a killed holder's lock taken over, nothing left
behind by a run that wrote nothing, one stage per folder, and --resume only of the same run."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal

import pytest

from hypermorph_spatially_adaptive.stages.run_folder import (LOCK_NAME, RECORD_NAME, OutputLock, check_owner,
                                                             check_resume, file_identity, folder_owner, record_run,
                                                             run_record)


def test_a_second_lock_on_the_folder_fails_naming_the_folder_and_the_holder(tmp_path):
    out = tmp_path / "run"
    with OutputLock(out):
        assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(ValueError, match=rf"--out {out} is in use by another run \(process {os.getpid()}\)"):
            OutputLock(out).acquire()
    with OutputLock(out):  # released: free again
        pass


def test_release_removes_the_lock_file_and_the_folders_it_created_while_they_are_empty(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    with OutputLock(out):
        assert out.is_dir()
    assert not (tmp_path / "a").exists()
    with OutputLock(out):
        (out / "result.txt").write_text("kept")
    assert sorted(p.name for p in out.iterdir()) == ["result.txt"]


def _hold(folder, ready, pid_queue):
    lock = OutputLock(folder).acquire()
    pid_queue.put(os.getpid())
    ready.set()
    signal.pause()  # until killed; the lock is never released by this process


def test_a_holder_killed_with_sigkill_leaves_a_lock_the_next_run_takes_over(tmp_path):
    out = tmp_path / "run"
    context = multiprocessing.get_context("fork")
    ready, pids = context.Event(), context.Queue()
    holder = context.Process(target=_hold, args=(out, ready, pids))
    holder.start()
    try:
        assert ready.wait(30)
        pid = pids.get(timeout=5)
        with pytest.raises(ValueError, match=f"process {pid}"):
            OutputLock(out).acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    assert (out / LOCK_NAME).is_file()  # left behind by the killed process...
    with OutputLock(out) as lock:  # ...but not locked: the kernel released it
        assert lock.taken_over == str(pid)


@pytest.mark.parametrize("kind", ["file", "unwritable"])
def test_an_out_that_is_a_file_or_cannot_be_written_is_a_value_error_naming_it(kind, tmp_path):
    if kind == "file":
        out = tmp_path / "run"
        out.write_text("not a folder")
        needle = "is a file, not a folder"
    elif os.geteuid() == 0:
        out, needle = "/sys/hypermorph_test_run", "cannot create"  # sysfs refuses new folders, even to root
    else:
        tmp_path.chmod(0o500)
        out, needle = tmp_path / "run", "cannot create"
    try:
        with pytest.raises(ValueError, match=needle) as error:
            OutputLock(out).acquire()
        assert f"--out {out}" in str(error.value)
    finally:
        tmp_path.chmod(0o700)


def test_a_folder_belongs_to_the_stage_that_wrote_it(tmp_path):
    out = tmp_path / "run"
    record_run(out, run_record("training", {"lr": 0.1}))
    assert folder_owner(out) == "training"
    check_owner(out, "training")
    with pytest.raises(ValueError, match="holds the outputs of the training stage; the inference stage"):
        check_owner(out, "inference")
    unrecorded = tmp_path / "unrecorded"  # a stage's files but no run.json: nothing shows whose run it is
    unrecorded.mkdir()
    (unrecorded / "grid_scores.csv").write_text("")
    with pytest.raises(ValueError, match=r"holds files that no stage wrote \(grid_scores.csv; no run.json\)"):
        check_owner(unrecorded, "identification")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files that no stage wrote \(notes.txt; no run.json\)"):
        check_owner(foreign, "training")
    check_owner(tmp_path / "new", "training")


def test_resume_names_every_changed_option_and_input_and_allows_the_listed_ones(tmp_path):
    out, model = tmp_path / "run", tmp_path / "model.pt"
    model.write_bytes(b"weights")
    record_run(out, run_record("training", {"lr": 0.1, "steps": 10, "data_root": "d"}, {"--init-from": model},
                               paths=("data_root",)))
    check_resume(out, run_record("training", {"lr": 0.1, "steps": 20, "data_root": "d"}, {"--init-from": model},
                                 paths=("data_root",)), may_differ=("steps",))
    model.write_bytes(b"other weights")
    with pytest.raises(ValueError) as error:
        check_resume(out, run_record("training", {"lr": 0.2, "steps": 10, "data_root": "e"}, {"--init-from": model},
                                     paths=("data_root",)))
    message = str(error.value)
    assert message.startswith(f"--resume: {out / RECORD_NAME} records a run with other inputs")
    assert "--lr 0.1 (now 0.2)" in message and "--data-root" in message and "--init-from" in message
    assert "--steps" not in message


def test_resume_of_a_folder_with_outputs_but_no_record_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.csv").write_text("")
    with pytest.raises(ValueError, match="no run.json"):
        check_resume(tmp_path / "run", run_record("inference", {}))
    check_resume(tmp_path / "empty", run_record("inference", {}))  # nothing to resume: a fresh run


def test_file_identity_is_the_size_and_sha256_of_the_content(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(os.urandom(3 << 20))
    identity = file_identity(path)
    assert identity["size"] == 3 << 20
    assert identity["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_recording_a_run_removes_stale_temporaries_but_not_those_of_other_runs_inside(tmp_path):
    out = tmp_path / "run"
    (out / "global").mkdir(parents=True)
    (out / "checkpoints").mkdir()
    stale = [out / ".metrics.csv.abc.tmp", out / "global" / ".disp_1.nii.gz.x1.tmp"]
    for path in stale:
        path.write_bytes(b"partial")
    (out / "checkpoints" / RECORD_NAME).write_text(json.dumps({"stage": "training"}))  # another run's folder
    (out / "checkpoints" / ".last.pt.y.tmp").write_bytes(b"theirs")
    record_run(out, run_record("demo", {}))
    assert not any(path.exists() for path in stale)
    assert (out / "checkpoints" / ".last.pt.y.tmp").exists()


@pytest.mark.parametrize("kind", ["symlink", "folder", "fifo"])
def test_a_lock_that_is_not_a_regular_file_is_refused_and_nothing_it_names_is_written(kind, tmp_path):
    out, target = tmp_path / "run", tmp_path / "precious.txt"
    out.mkdir()
    target.write_text("keep me")
    {"symlink": lambda p: p.symlink_to(target), "folder": lambda p: p.mkdir(), "fifo": os.mkfifo}[kind](
        out / LOCK_NAME)
    with pytest.raises(ValueError, match=rf"--out {out}: {out / LOCK_NAME} is (a symbolic link|a folder|not a regular file), not a lock file"):
        OutputLock(out).acquire()
    assert target.read_text() == "keep me"


def test_a_refused_run_leaves_the_holders_lock_file_as_it_was(tmp_path):
    out = tmp_path / "run"
    with OutputLock(out):
        with pytest.raises(ValueError, match="in use"):
            OutputLock(out).acquire()
        assert (out / LOCK_NAME).read_text() == f"{os.getpid()}\n"


def test_deleting_a_live_lock_file_lets_no_second_run_in(tmp_path):
    out = tmp_path / "run"
    with OutputLock(out):
        (out / LOCK_NAME).unlink()
        with pytest.raises(ValueError, match="is in use by another run"):
            OutputLock(out).acquire()
    with OutputLock(out):
        pass


def _hold_until_stopped(folder, ready):
    with OutputLock(folder):
        ready.set()
        signal.pause()


def test_a_holder_stopped_with_sigterm_removes_its_lock_file_and_the_folder_it_created(tmp_path):
    out = tmp_path / "a" / "run"
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    holder = context.Process(target=_hold_until_stopped, args=(out, ready))
    holder.start()
    assert ready.wait(30)
    os.kill(holder.pid, signal.SIGTERM)
    holder.join(30)
    assert holder.exitcode == 128 + signal.SIGTERM
    assert not (tmp_path / "a").exists()
