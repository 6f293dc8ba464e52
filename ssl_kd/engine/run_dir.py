"""The run folder: resolved config, metrics.jsonl, checkpoints, SSL split. Only rank 0 writes, and only while it
holds the folder's lock (one live run per folder)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not guarded against a second launch there
    fcntl = None

import contextlib

import yaml

from ssl_kd.errors import UserError


class RunDir:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.metrics = self.root / "metrics.jsonl"
        self.checkpoints = self.root / "checkpoints"
        self.last = self.checkpoints / "last.pt"
        self.previous = self.checkpoints / "previous.pt"  # the checkpoint before last.pt, the fallback
        self.split = self.root / "split.npz"
        self.lock_file = self.root / ".lock"
        self._lock_fd: int | None = None

    def stage_file(self, stage: str, which: str) -> Path:
        return self.checkpoints / stage / f"{which}.pt"

    def check_new(self) -> None:
        """Refuse to start fresh on top of an earlier run: nothing of it may be overwritten."""
        if self.holds_run():
            how = (
                "Continue it with --resume"
                if self.has_checkpoint()
                else "It stopped before its first checkpoint: start it again from step 0 with --resume"
            )
            raise UserError(
                f"run folder {self.root} already holds a run. {how}, or start a new one "
                f"with experiment.name=<new name> (or experiment.output_dir=<path>)."
            )

    def holds_run(self) -> bool:
        """A run began here: it wrote a record or a checkpoint (config.yaml alone is rewritten by a new start)."""
        return self.has_checkpoint() or self.metrics.exists()

    def has_checkpoint(self) -> bool:
        return self.last.exists() or self.previous.exists()

    # ------------------------------------------------------------------------------------------ the lock
    def lock(self) -> str | None:
        """Take the folder's OS lock for this process's life (the kernel drops it when the process dies, however it
        dies). Returns why it cannot be taken (another live process holds it), else None; says so when it takes
        over the lock file of a process that ended without removing it."""
        if fcntl is None or self._lock_fd is not None:
            return None
        while True:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                return (
                    f"run folder {self.root} is in use by a live ssl_kd run ({holder}). Wait for it to end (or "
                    f"stop it), or give this run its own folder with experiment.name=<new name>."
                )
            try:  # the holder may have removed the file between our open and flock: lock the file that is there
                same = os.stat(self.lock_file).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        left = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if left:
            print(f"{self.root}: taking over the lock of a run that ended without releasing it ({left}).")
        os.ftruncate(fd, 0)
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
        self._lock_fd = fd
        return None

    def unlock(self) -> None:
        """Release the lock: remove the file while still holding it, then close (which drops the flock)."""
        if self._lock_fd is None:
            return
        with contextlib.suppress(OSError):
            self.lock_file.unlink()
        os.close(self._lock_fd)
        self._lock_fd = None

    def creatable(self) -> str | None:
        """Why the folder could not be created or written (None if it can): checked without creating anything."""
        path = self.root.absolute()
        while not path.exists():
            if path.parent == path:
                return f"no such place {path}"
            path = path.parent
        if not path.is_dir():
            return f"{path} is a file, not a folder"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"no permission to write in {path}"
        return None

    def create(self) -> None:
        """Make the run folder (and its parents): a UserError naming the path if that is impossible."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK | os.X_OK):
                raise PermissionError(13, "no permission to write there")
        except OSError as e:
            why = self.creatable() or e.strerror or type(e).__name__
            raise UserError(
                f"experiment.output_dir: cannot create the run folder {self.root} ({why}). "
                f"Give a writable place with experiment.output_dir=<path>."
            ) from None

    def check_resumable(self) -> bool:
        """May `--resume` go on here? True: from a checkpoint; False: the run stopped before its first checkpoint
        (killed early, a NaN or a full disk in its first steps) and starts again from step 0 under its config."""
        if self.has_checkpoint():
            return True
        if self.holds_run() or self.config.is_file():
            return False
        raise UserError(
            f"--resume: nothing to resume in {self.root} (no run was started there). Run without --resume to start it."
        )

    def write_config(self, resolved: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.config.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))
        os.replace(tmp, self.config)

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    def metrics_size(self) -> int:
        return self.metrics.stat().st_size if self.metrics.exists() else 0

    def truncate_metrics(self, size: int) -> None:
        """On resume, drop records written after the checkpoint: they will be written again."""
        if self.metrics.exists() and self.metrics.stat().st_size > size:
            with open(self.metrics, "r+b") as f:
                f.truncate(size)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
