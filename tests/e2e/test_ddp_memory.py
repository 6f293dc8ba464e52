"""Memory banks under real DDP (2 processes on CPU, gloo, started by torchrun): every rank holds the same bank, and
it equals the bank of 1 process on the global batch, through instance discrimination, the sharded refill, CRD's
updates and Z, followed by a linear probe (whose BN statistics DDP broadcasts from rank 0)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import CONFIGS, ROOT

CFG = """
_base_: {base}
models:
  net: {{arch: mlp, kwargs: {{hidden: 32, depth: 1}}}}
stages:
  instance: {{type: instdisc, train: [net], iters: 5, batch_size: 32, augment: none, eval: {{batch_size: 200}}}}
  contrast: {{type: crd, train: [net], uses: [net_t0], snapshot: {{of: net, as: net_t0}}, iters: 5, batch_size: 32,
             num_negatives: 100, augment: none, refill_augment: none, eval: {{batch_size: 200}}}}
  probe: {{type: linear_probe, uses: [net], iters: 3, batch_size: 32, eval: {{batch_size: 200}}}}
experiment: {{logger: {{progress: false, log_every: 5}}}}
"""

# a launcher that saves every rank's banks at the end of each stage, then runs the CLI
SCRIPT = """
import sys, torch
import ssl_kd.stages
from ssl_kd.config import registry
from ssl_kd.stages.ctc import CRD, InstDisc
from ssl_kd.run import main

OUT = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("experiment.output_dir="))

def dump(stage, tag, banks):
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    torch.save({k: v.cpu() for k, v in banks.items()}, f"{OUT}/{tag}_rank{rank}.pt")

class I(InstDisc):
    def on_stage_end(self):
        dump(self, "instance", {"memory": self.memory.memory})

class C(CRD):
    def on_stage_start(self):
        super().on_stage_start()
        dump(self, "refill", {"memory_s": self.memory_s.memory, "memory_t": self.memory_t.memory})

    def on_stage_end(self):
        dump(self, "contrast", {"memory_s": self.memory_s.memory, "memory_t": self.memory_t.memory, "z": self.z.z})

registry._STAGES["instdisc"], registry._STAGES["crd"] = I, C
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # torchrun, 13 s on 2 cores; DDP = 1 process is held in CI by test_ddp.py
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_processes_hold_one_bank_equal_to_one_process(tmp_path):
    cfg, script = tmp_path / "ctc.yaml", tmp_path / "launch.py"
    cfg.write_text(CFG.format(base=CONFIGS / "_base_" / "digits.yaml"))
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    res = subprocess.run([sys.executable, str(script), str(cfg), f"experiment.output_dir={one}"], capture_output=True,
                         text=True, env=env, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    cmd = ["torchrun", "--nproc_per_node", "2", "--master_port", "29523", str(script), str(cfg),
           f"experiment.output_dir={two}"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]

    def load(folder, name, rank):
        return torch.load(folder / f"{name}_rank{rank}.pt", weights_only=True)

    # 1397 digits over 2 ranks: the refill's shards are padded (698 + 699), the padding is not written
    for name, keys in (
        ("instance", ["memory"]),
        ("refill", ["memory_s", "memory_t"]),
        ("contrast", ["memory_s", "memory_t", "z"]),
    ):
        single, r0, r1 = load(one, name, 0), load(two, name, 0), load(two, name, 1)
        for k in keys:
            assert torch.equal(r0[k], r1[k]), f"{name}/{k}: ranks differ"
            assert torch.allclose(single[k], r0[k], atol=1e-5), f"{name}/{k}: 2 processes != 1 process"
    a = torch.load(one / "checkpoints/last.pt", weights_only=True)
    b = torch.load(two / "checkpoints/last.pt", weights_only=True)
    assert all(torch.allclose(a["models"]["net"][k], b["models"]["net"][k], atol=1e-5) for k in a["models"]["net"])
    assert a["results"]["probe"]["last"]["net/top1"] == pytest.approx(
        b["results"]["probe"]["last"]["net/top1"], abs=0.01
    )
