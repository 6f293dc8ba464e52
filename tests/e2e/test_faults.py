"""Faults a long run meets, on a real two-stage run (quickstart on digits): a second launch into a live run's folder,
kill -9, SIGTERM / Ctrl-C to the whole process group, a death before the first checkpoint, a flipped bit in the
checkpoint, a full disk or read-only folder mid-run, the temp files of killed writes. After each, the run either
continues bit-identically with --resume or stops with one line naming the file and the cause.

The long version (every stateful stage type, random kill points, kills inside a checkpoint write) is
benchmarks/fault_injection.py.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    CONFIGS,
    ROOT,
    STATEFUL_CONFIGS,
    assert_resume_exact,
    assert_same_tree,
    fault_overrides,
    run_cli,
    run_crashing,
)

from ssl_kd.engine import RunDir

QUICK = CONFIGS / "quickstart.yaml"
ARGS = [
    QUICK, "stages.teacher.epochs=2", "stages.distill.epochs=3", "stages.teacher.eval.every=1",
    "stages.distill.eval.every=1", "experiment.logger.log_every=3", "experiment.logger.progress=false",
    "stages.teacher.checkpoint.every=5", "stages.teacher.checkpoint.unit=steps",
    "stages.distill.checkpoint.every=5", "stages.distill.checkpoint.unit=steps",
]  # fmt: skip


def weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["models"]


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "full"
    assert run_cli(*ARGS, f"experiment.output_dir={out}") == 0
    return out


def error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("ssl_kd:")]


def flip_bit(path: Path, member_suffix: str = "/data/0") -> None:
    """Flip one bit inside a tensor record of a torch zip file (what a bad disk or a bad copy does)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(member_suffix))
    raw = bytearray(path.read_bytes())
    h = info.header_offset  # the local header's own name and extra (alignment padding) lengths
    start = h + 30 + int.from_bytes(raw[h + 26 : h + 28], "little") + int.from_bytes(raw[h + 28 : h + 30], "little")
    raw[start + 5] ^= 0x10
    path.write_bytes(bytes(raw))


def _spawn(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "ssl_kd.run", *map(str, ARGS), *extra, f"experiment.output_dir={out}"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before the fault was injected: {proc.stderr.read().decode()}"


def _records(out: Path) -> int:
    m = out / "metrics.jsonl"
    return m.read_text().count("\n") if m.exists() else 0


# ------------------------------------------------------------------------------------------------ one run per folder
def test_a_live_runs_folder_refuses_a_second_launch_and_its_resume(full, tmp_path, capsys):
    """A second launch (or --resume) while another process holds the folder exits 2 naming it; nothing is written."""
    holder = RunDir(full)
    assert holder.lock() is None  # another live run holds the folder
    try:
        before = {p: p.stat().st_mtime_ns for p in full.rglob("*")}
        capsys.readouterr()
        assert run_cli(full / "config.yaml", "--resume") == 2
        assert run_cli(*ARGS, f"experiment.output_dir={full}") == 2
        lines = error_lines(capsys)
        assert len(lines) == 2 and all(f"{full} is in use by a live ssl_kd run (pid {os.getpid()}" in x for x in lines)
        assert {p: p.stat().st_mtime_ns for p in full.rglob("*")} == before
    finally:
        holder.unlock()
    assert not holder.lock_file.exists()  # released cleanly: no lock file left


def test_concurrent_launch_then_kill_9_then_resume(full, tmp_path, capsys):
    """Two real processes: the second is refused while the first lives; the first is killed (-9) at a random
    moment; --resume takes over its lock with a line and finishes with the uninterrupted run's weights."""
    out = tmp_path / "run"
    proc = _spawn(out)
    rng = random.Random(os.environ.get("SSL_KD_FAULT_SEED", "22"))
    target = rng.randint(1, 12)  # train/eval records written before the kill
    _wait_for(proc, lambda: RunDir(out).lock_file.exists() and RunDir(out).lock_file.stat().st_size > 0)
    assert run_cli(*ARGS, f"experiment.output_dir={out}") == 2  # the second launch, while the first runs
    assert f"{out} is in use by a live ssl_kd run (pid {proc.pid}" in capsys.readouterr().err
    _wait_for(proc, lambda: _records(out) >= target)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert run_cli(out / "config.yaml", "--resume") == 0
    assert "taking over the lock of a run that ended" in capsys.readouterr().out
    assert_same_tree(weights(full), weights(out))
    assert not list(out.rglob(".*.tmp-*"))


# ------------------------------------------------------------------------------------------------ signals
@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_signal_to_the_process_group_writes_a_checkpoint_and_resumes_exactly(full, tmp_path, sig):
    """SLURM pre-emption (SIGTERM to every process of the job) and Ctrl-C (SIGINT to the terminal's process group),
    with DataLoader workers: the step finishes, a checkpoint is written, the run exits 128 + N with one line."""
    out = tmp_path / "run"
    proc = _spawn(out, "data.num_workers=2")
    _wait_for(proc, lambda: _records(out) >= 4)
    os.killpg(proc.pid, sig)
    assert proc.wait(timeout=120) == 128 + sig
    err = proc.stderr.read().decode()
    assert "Traceback" not in err and "a checkpoint was written. Continue with --resume." in err, err
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["global_step"] > 0
    assert run_cli(out / "config.yaml", "--resume") == 0
    assert_same_tree(weights(full), weights(out))


# ------------------------------------------------------------------------------------------------ dead ends
def test_a_run_that_died_before_its_first_checkpoint_restarts_with_resume(full, tmp_path, capsys):
    out = tmp_path / "early"
    args = [*ARGS, "stages.teacher.checkpoint.every=1000", f"experiment.output_dir={out}"]
    assert run_crashing(3, *args) == 130
    assert not (out / "checkpoints" / "last.pt").exists() and (out / "metrics.jsonl").exists()
    capsys.readouterr()
    assert run_cli(*args) == 2  # not on top of it ...
    assert "stopped before its first checkpoint: start it again from step 0 with --resume" in capsys.readouterr().err
    assert run_cli(out / "config.yaml", "--resume") == 0  # ... but with --resume, from step 0
    assert "starting it again from step 0" in capsys.readouterr().out
    assert_same_tree(weights(full), weights(out))
    records = [line for line in (out / "metrics.jsonl").read_text().splitlines() if '"kind": "train"' in line]
    assert len(records) == len(set(records))  # the dead run's records were dropped, none duplicated


# ------------------------------------------------------------------------------------------------ damaged files
@pytest.fixture
def cut(tmp_path) -> Path:
    """A run killed at global step 23 (checkpoints at steps 20 = last.pt and 15 = previous.pt)."""
    out = tmp_path / "cut"
    assert run_crashing(23, *ARGS, f"experiment.output_dir={out}") == 130
    return out


def test_a_flipped_bit_in_last_pt_falls_back_to_the_previous_checkpoint(full, cut, capsys):
    last = cut / "checkpoints" / "last.pt"
    flip_bit(last)
    (cut / "checkpoints" / ".last.pt.tmp-99999").write_bytes(b"PK\x03\x04 half a write")  # a kill during a write
    capsys.readouterr()
    assert run_cli(cut / "config.yaml", "--resume") == 0
    out = capsys.readouterr().out
    assert f"{last} is damaged: the checksum of record" in out and "Going on from the checkpoint before it" in out
    assert "removed 1 unfinished write(s) of a killed run (.last.pt.tmp-99999" in out
    assert_same_tree(weights(full), weights(cut))
    assert not list(cut.rglob(".*.tmp-*"))


def test_both_checkpoints_damaged_is_one_line_naming_them(cut, capsys):
    ckpts = cut / "checkpoints"
    flip_bit(ckpts / "last.pt")
    (ckpts / "previous.pt").write_bytes(os.urandom(4096))
    capsys.readouterr()
    assert run_cli(cut / "config.yaml", "--resume") == 2
    (line,) = error_lines(capsys)
    assert f"{ckpts / 'last.pt'} is damaged" in line
    assert f"{ckpts / 'previous.pt'} is unreadable: not a torch checkpoint, or damaged" in line
    assert "checkpoints/teacher/last.pt" not in line  # the teacher stage had not finished at step 23


# ------------------------------------------------------------------------------------------------ storage failures
def test_a_full_disk_during_a_checkpoint_write_is_one_line_and_keeps_the_previous(cut, monkeypatch, capsys):
    from ssl_kd.engine import checkpoint_io

    last = cut / "checkpoints" / "last.pt"
    before = last.read_bytes()

    class FillingDisk:  # the OS's file: writes fail with ENOSPC once 20 kB are written
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, data):
            self.n += len(data)
            if self.n > 20_000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(checkpoint_io, "open", lambda *a, **k: FillingDisk(open(*a, **k)), raising=False)  # noqa: SIM115
    capsys.readouterr()
    assert run_cli(cut / "config.yaml", "--resume") == 1
    (line,) = error_lines(capsys)
    assert re.match(
        rf"ssl_kd: stopped: cannot write {cut}/checkpoints/\S+\.pt \(No space left on device, ENOSPC\)", line
    )
    assert last.read_bytes() == before and not list(cut.rglob(".*.tmp-*"))


def test_a_folder_turned_read_only_is_one_line(cut, monkeypatch, capsys):
    def append(self, record):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self.metrics))

    monkeypatch.setattr(RunDir, "append_metrics", append)
    capsys.readouterr()
    assert run_cli(cut / "config.yaml", "--resume") == 1
    (line,) = error_lines(capsys)
    assert line.startswith(f"ssl_kd: stopped: cannot write {cut / 'metrics.jsonl'}: Read-only file system.")


def test_a_file_size_limit_is_named_not_a_torch_traceback(tmp_path):
    """A real EFBIG (ulimit -f, in a forked child) inside torch.save: torch itself reports `unexpected pos`; the
    error names the file and the cause, and the previous checkpoint stays."""
    import resource

    from ssl_kd.engine.checkpoint_io import CheckpointWriteError, save_atomic

    path = tmp_path / "last.pt"
    save_atomic({"w": torch.zeros(10)}, path)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a 20 kB file-size limit, then a bigger checkpoint
        message = "no error"
        try:
            resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
            save_atomic({"w": torch.zeros(100_000)}, path, keep_previous=True)
        except CheckpointWriteError as e:
            message = str(e)
        except BaseException as e:  # noqa: BLE001  (reported to the parent, which fails the test)
            message = f"{type(e).__name__}: {e}"
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    message = os.read(read, 4096).decode()
    os.close(read)
    assert message.startswith(f"cannot write {path} (File too large, EFBIG); the previous checkpoint is intact")
    assert torch.load(path, weights_only=True)["w"].shape == (10,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_sigterm_under_ddp_stops_every_rank_at_one_step_and_resumes_exactly(tmp_path):
    """torchrun passes SIGTERM to both ranks (at different moments): they agree on one step, checkpoint and exit;
    a 2-process --resume then ends with the uninterrupted 2-process run's weights."""
    ddp = [*ARGS, "models.teacher.arch=mlp", "models.teacher.kwargs={hidden: 32, depth: 1}",
           "models.student.arch=mlp", "models.student.kwargs={hidden: 16, depth: 1}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def torchrun(*args: str, port: int) -> subprocess.Popen:
        cmd = ["torchrun", "--nproc_per_node", "2", "--master_port", str(port), "-m", "ssl_kd.run", *map(str, args)]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    full, cut = tmp_path / "full", tmp_path / "cut"
    assert torchrun(*ddp, f"experiment.output_dir={full}", port=29541).wait(timeout=300) == 0
    proc = torchrun(*ddp, f"experiment.output_dir={cut}", port=29542)
    _wait_for(proc, lambda: _records(cut) >= 3)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    err = proc.stderr.read().decode()
    assert err.count("a checkpoint was written") >= 1, err[-3000:]
    ckpt = torch.load(cut / "checkpoints" / "last.pt", weights_only=True)
    assert len(ckpt["rng"]) == 2 and ckpt["global_step"] > 0
    assert torchrun(cut / "config.yaml", "--resume", port=29543).wait(timeout=300) == 0
    assert_same_tree(weights(full), weights(cut))


# ------------------------------------------------------------------------------------------------ every stateful type
CI_STATEFUL = {"selfkd/mixskd_cifar100_resnet18", "prune/ghfp_resnet56_cifar10"}


@pytest.mark.parametrize(
    "name", [n if n in CI_STATEFUL else pytest.param(n, marks=pytest.mark.slow) for n in STATEFUL_CONFIGS]
)
def test_a_kill_at_a_random_step_resumes_exactly(name, fake_data_root, tmp_path):
    """Each stateful stage type (two in CI, all with SSL_KD_SLOW=1) killed at a random step (SSL_KD_FAULT_SEED
    picks them; the long version with real SIGKILLs is benchmarks/fault_injection.py)."""
    path = next(CONFIGS.glob(f"{name}.yaml"))
    args = [path, *fault_overrides(path, fake_data_root, steps=6)]
    full = tmp_path / "full"
    assert run_cli(*args, f"experiment.output_dir={full}") == 0
    steps = torch.load(full / "checkpoints" / "last.pt", weights_only=True)["global_step"]
    at = random.Random(f"{os.environ.get('SSL_KD_FAULT_SEED', '22')}/{name}").randint(1, steps - 1)
    assert_resume_exact(args, at, tmp_path, full=full)
