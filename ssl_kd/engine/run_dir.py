"""The run folder: resolved config, metrics.jsonl, checkpoints, SSL split. Only rank 0 writes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from ssl_kd.errors import UserError


class RunDir:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.metrics = self.root / "metrics.jsonl"
        self.checkpoints = self.root / "checkpoints"
        self.last = self.checkpoints / "last.pt"
        self.split = self.root / "split.npz"

    def stage_file(self, stage: str, which: str) -> Path:
        return self.checkpoints / stage / f"{which}.pt"

    def check_new(self) -> None:
        """Refuse to start fresh on top of an earlier run: nothing of it may be overwritten."""
        if self.holds_run():
            raise UserError(
                f"run folder {self.root} already holds a run. Continue it with --resume, or start a new one "
                f"with experiment.name=<new name> (or experiment.output_dir=<path>)."
            )

    def holds_run(self) -> bool:
        return self.last.exists() or self.metrics.exists()

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

    def check_resumable(self) -> None:
        if not self.last.is_file():
            raise UserError(
                f"--resume: nothing to resume in {self.root} (no checkpoints/last.pt). "
                f"Run without --resume to start it."
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
