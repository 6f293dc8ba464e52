"""runners/slurm.sh under fake srun / scontrol / accelerate: SIGTERM (pre-emption, the time limit) is passed on to
the run, which writes its checkpoint; then the job is requeued. A run that ends by itself is not requeued."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import ROOT

FAKES = {
    "srun": '#!/usr/bin/env bash\nwhile [ "$1" != "bash" ]; do shift; done\nshift; shift\nexec bash -c "$1"\n',
    "scontrol": '#!/usr/bin/env bash\nif [ "$1" = show ]; then echo node0; else echo "$*" >> "$LOG/scontrol"; fi\n',
    "accelerate": (
        "#!/usr/bin/env bash\n"
        'echo "$*" > "$LOG/args"\n'
        "trap 'echo checkpoint > \"$LOG/saved\"; exit 143' TERM\n"
        'if [ "${FAKE_RUN_ENDS:-0}" = 1 ]; then exit 0; fi\n'
        "while true; do sleep 0.05; done\n"
    ),
}


def _start(tmp_path: Path, **env: str) -> subprocess.Popen:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in FAKES.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    environ = {
        **os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(tmp_path), "SLURM_JOB_ID": "77",
        "SLURM_JOB_NODELIST": "node0", "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_GPUS_ON_NODE": "2", **env,
    }  # fmt: skip
    script = ROOT / "runners" / "slurm.sh"
    return subprocess.Popen(["bash", str(script), "configs/quickstart.yaml", "seed=1"], cwd=tmp_path, env=environ)


@pytest.mark.skipif(os.name != "posix", reason="bash")
def test_sigterm_checkpoints_and_requeues(tmp_path):
    proc = _start(tmp_path)
    deadline = time.time() + 20
    while not (tmp_path / "args").exists() and time.time() < deadline:
        time.sleep(0.02)
    assert "-m ssl_kd.run configs/quickstart.yaml seed=1" in (tmp_path / "args").read_text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert (tmp_path / "saved").read_text().strip() == "checkpoint"  # the run got the signal
    assert (tmp_path / "scontrol").read_text().split() == ["requeue", "77"]


@pytest.mark.skipif(os.name != "posix", reason="bash")
def test_a_run_that_ends_is_not_requeued(tmp_path):
    proc = _start(tmp_path, FAKE_RUN_ENDS="1")
    assert proc.wait(timeout=20) == 0
    assert not (tmp_path / "scontrol").exists() and not (tmp_path / "saved").exists()
