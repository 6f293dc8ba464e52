#!/usr/bin/env bash
# SLURM: N nodes x G GPUs, one `accelerate launch` per node.
#   sbatch --nodes=2 --gpus-per-node=4 runners/slurm.sh configs/cifar10_supervised.yaml [overrides...]
# Resubmitting the same job continues the run (--resume is added when checkpoints/last.pt exists).
#SBATCH --job-name=ssl_kd
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail
CONFIG=${1:?usage: sbatch runners/slurm.sh CONFIG [overrides...]}
shift
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L | wc -l)}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
NAME=$(python -c "import sys,pathlib; print(pathlib.Path(sys.argv[1]).stem)" "$CONFIG")
RESUME=()
if [ -f "runs/$NAME/checkpoints/last.pt" ]; then RESUME=(--resume); fi
srun --kill-on-bad-exit=1 bash -c "accelerate launch \
  --num_machines $SLURM_NNODES --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
  --machine_rank \$SLURM_NODEID --main_process_ip $MASTER_ADDR --main_process_port $MASTER_PORT \
  --multi_gpu --rdzv_backend static \
  -m ssl_kd.run $CONFIG $* ${RESUME[*]:-}"
