#!/usr/bin/env bash
# SLURM: N nodes x G GPUs, one `accelerate launch` per node.
#   sbatch --nodes=2 --gpus-per-node=4 runners/slurm.sh configs/cifar10_supervised.yaml [overrides...]
# Resubmitting the same job continues the run (--resume is added when checkpoints/last.pt exists).
#
# Pre-emption and the time limit: SLURM sends SIGTERM (here also 120 s before the limit, --signal). The run finishes
# its step, writes a checkpoint and exits; this script then requeues the job, which resumes where it stopped.
#SBATCH --job-name=ssl_kd
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
set -euo pipefail
CONFIG=${1:?usage: sbatch runners/slurm.sh CONFIG [overrides...]}
shift
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L | wc -l)}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
NAME=$(python -c "import sys,pathlib; print(pathlib.Path(sys.argv[1]).stem)" "$CONFIG")
RESUME=()
if [ -f "runs/$NAME/checkpoints/last.pt" ] || [ -f "runs/$NAME/metrics.jsonl" ]; then RESUME=(--resume); fi

STOPPED=0
on_term() {  # pass the signal on to the job step: every rank stops at the same step after a checkpoint
  STOPPED=1
  echo "ssl_kd/slurm: SIGTERM; the run writes a checkpoint, then the job is requeued"
  kill -TERM "$STEP" 2>/dev/null || true
}
trap on_term TERM

srun --kill-on-bad-exit=1 bash -c "accelerate launch \
  --num_machines $SLURM_NNODES --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
  --machine_rank \$SLURM_NODEID --main_process_ip $MASTER_ADDR --main_process_port $MASTER_PORT \
  --multi_gpu --rdzv_backend static \
  -m ssl_kd.run $CONFIG $* ${RESUME[*]:-}" &
STEP=$!
RC=0
while true; do  # `wait` returns early when the trap runs: wait again until the step has ended
  wait "$STEP" && RC=0 || RC=$?
  kill -0 "$STEP" 2>/dev/null || break
done
if [ "$STOPPED" = 1 ]; then
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
exit "$RC"
