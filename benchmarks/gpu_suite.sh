#!/usr/bin/env bash
# The GPU suite: on one GPU machine, in one call,
#   (a) the device augmentation's checks on CUDA: benchmarks/augment_fidelity.py (each RandAugment op and the whole
#       weak / strong views against the host, PIL-exact, ones on 2,048 real CIFAR-10 images) and, when present,
#       benchmarks/augment_cost.py --graph (its cost per batch and its CUDA-vs-CPU bit-equality check);
#   (b) benchmarks/throughput.py with USB's FixMatch in the same call, bf16 + channels_last, for
#       {host, device} data path x {eager, default, reduce-overhead} at 12 and then 4 DataLoader workers
#       (20 warm-up + 60 timed steps per row; the compute alone and the host pipeline alone beside them);
#   (c) one markdown table from their JSON: benchmarks/results/gpu_suite.md (benchmarks/gpu_suite_table.py).
#
# Time on one H100 (16 cores), estimated, not yet measured: wheels ~15 s, checks ~60 s, 12 workers ~4 min (the
# first torch.compile of WRN-28-2 ~1 min, later compiles hit the on-disk cache), 4 workers ~2.5 min, USB ~30 s per
# worker count: ~8 min. A hard budget (SUITE_BUDGET, 540 s) caps every step; rows are written as they finish, so
# a cut-off call still leaves a table of what ran.
#
#   bash benchmarks/gpu_suite.sh --prepare   # here, with network and $SSL_KD_DATA: wheels + a data subset into
#                                            # .gpu_suite/ (git-ignored through .git/info/exclude), ~40 MB
#   bash benchmarks/gpu_suite.sh             # on the GPU machine (carry .gpu_suite); table + JSON + logs to $OUT
#   bash benchmarks/gpu_suite.sh --dry-run   # here, on the CPU (or SUITE_DRY=1): the same steps with 1 + 1 steps,
#                                            # batch 4 + 2 x 4, 2 and 1 workers: checks the script, not the speed
#
# The GPU image lacks albumentations, pydantic (ssl_kd) and semilearn, progress, ruamel.yaml (USB); aim and wandb
# are not needed (benchmarks/usb_fixmatch.py puts empty stand-ins in their place). Wheels in SUITE_WHEELS
# (default .gpu_suite/wheels, else wheels/) are installed with `pip install --no-index --find-links` into
# /tmp/suite_site. Other knobs: SUITE_DATA (a folder with cifar10.npz), SUITE_WORK (JSON and logs; default $OUT,
# else /tmp/gpu_suite), SUITE_BUDGET (seconds), SUITE_USB_SITE (a folder holding semilearn), PYTHON.
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DRY=${SUITE_DRY:-0}
MODE=run
case "${1:-}" in
  --dry-run) DRY=1 ;;
  --prepare) MODE=prepare ;;
  "") ;;
  *) echo "usage: $0 [--dry-run | --prepare]" >&2; exit 2 ;;
esac

# ------------------------------------------------------------------------------------------- --prepare (here)
# Versions: those of the CPU environment the tests run in (albumentations, pydantic) and semilearn 0.3.2's needs
# that the GPU image lacks; the image has torch, torchvision, torchaudio, transformers, timm, scikit-image,
# tensorboard, opencv, scipy, accelerate, einops. Python 3.12, manylinux x86_64.
WHEELS_LIST="semilearn==0.3.2 progress==1.6.1 ruamel.yaml==0.19.1 ruamel.yaml.clib==0.2.15 albumentations==2.0.8
albucore==0.0.24 pydantic==2.13.4 pydantic_core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
typing_extensions==4.16.0 simsimd==6.5.16 stringzilla==5.3.2"
if [ "$MODE" = prepare ]; then
  exclude=$(git rev-parse --git-path info/exclude)
  grep -qx "/.gpu_suite/" "$exclude" 2>/dev/null || echo "/.gpu_suite/" >>"$exclude"
  mkdir -p .gpu_suite/wheels .gpu_suite/data
  plat=""
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64; do plat="$plat --platform $p"; done
  # shellcheck disable=SC2086
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat \
    -d .gpu_suite/wheels $WHEELS_LIST || exit 1
  src=${SSL_KD_DATA:-../shared/data}/cifar10.npz
  $PY - "$src" .gpu_suite/data/cifar10.npz <<'EOF' || exit 1
import sys
import numpy as np
d = np.load(sys.argv[1])  # 10,000 training images (USB's and ssl_kd's pools; the step's speed does not depend on
# the pool's size) and the first 2,048 test images (the augmentation checks)
np.savez_compressed(sys.argv[2], x_train=d["x_train"][:10000], y_train=d["y_train"][:10000],
                    x_test=d["x_test"][:2048], y_test=d["y_test"][:2048])
EOF
  du -sh .gpu_suite
  echo "now, on the GPU machine (device run, carry [\".gpu_suite\"], timeout_s 600): bash benchmarks/gpu_suite.sh"
  exit 0
fi

# ------------------------------------------------------------------------------------------- setup
WORK=${SUITE_WORK:-${OUT:-/tmp/gpu_suite}}
mkdir -p "$WORK"
BUDGET=${SUITE_BUDGET:-540}
[ "$DRY" = 1 ] && BUDGET=${SUITE_BUDGET:-1500}
DEADLINE=$((SECONDS + BUDGET))
LOG="$WORK/suite.log"
: >"$LOG"
say() { echo "[suite $(date +%T) +${SECONDS}s] $*" | tee -a "$LOG"; }

WHEELS=${SUITE_WHEELS:-}
if [ -z "$WHEELS" ] && [ "$DRY" != 1 ]; then  # the wheels are for the GPU image (Python 3.12); a dry run names them
  for d in .gpu_suite/wheels wheels; do
    if compgen -G "$d/*.whl" >/dev/null; then WHEELS=$d; break; fi
  done
fi
SITE=/tmp/suite_site
if [ -n "$WHEELS" ]; then
  say "installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE"
  $PY -m pip install -q --no-index --find-links "$WHEELS" --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHEELS"/*.whl 2>&1 | tee -a "$LOG" || exit 1
  export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
USB_SITE=${SUITE_USB_SITE:-}
[ -z "$USB_SITE" ] && [ -d "$SITE/semilearn" ] && USB_SITE=$SITE
DATA=${SUITE_DATA:-}
if [ -z "$DATA" ]; then
  for d in .gpu_suite/data "${SSL_KD_DATA:-}" ../shared/data; do
    if [ -n "$d" ] && [ -f "$d/cifar10.npz" ]; then DATA=$(cd "$d" && pwd); break; fi
  done
fi
export SSL_KD_DATA=${DATA:-/nonexistent} WANDB_MODE=disabled PYTHONUNBUFFERED=1
say "python $($PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda",
  torch.cuda.is_available())'), data ${DATA:-none (throughput uses random images)}, USB site ${USB_SITE:-none}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"

if [ "$DRY" = 1 ]; then
  DEV=cpu
  FID=(--device cpu --images 64 --batch 64)
  TP=(--steps 1 --warmup 1 --batch 4 --uratio 1)
  WORKERS=(2 1)
  TABLE=benchmarks/results/gpu_suite_dry_run_cpu.md
  TITLE="GPU suite, CPU dry run (benchmarks/gpu_suite.sh --dry-run): the script checked, no speed figures"
else
  DEV=cuda
  FID=(--device cuda --images 2048)
  TP=(--steps 60 --warmup 20)
  WORKERS=(12 4)
  TABLE=benchmarks/results/gpu_suite.md
  TITLE="GPU suite (benchmarks/gpu_suite.sh): throughput with USB in the same call, and the device augmentation's checks"
fi

# run NAME CAP_SECONDS LOGFILE CMD...: at most CAP seconds and never past the budget; prints the exit status
run() {
  local name=$1 cap=$2 log=$3
  shift 3
  local left=$((DEADLINE - SECONDS))
  if ((left < 30)); then
    say "$name: skipped (budget spent)"
    echo "skipped: the suite's budget was spent" >"$log"
    RC=124
    return
  fi
  ((cap > left)) && cap=$left
  say "$name (at most ${cap}s): $*"
  timeout --kill-after=20 "$cap" "$@" >"$log" 2>&1
  RC=$?
  say "$name: exit $RC"
  tail -n 25 "$log" | tee -a "$LOG" >/dev/null
}

# ------------------------------------------------------------------------------------------- (a) checks
run "augment_fidelity" 120 "$WORK/augment_fidelity.log" $PY benchmarks/augment_fidelity.py "${FID[@]}"
RC_FID=$RC
RC_COST=skip
if [ -f benchmarks/augment_cost.py ]; then
  run "augment_cost" 120 "$WORK/augment_cost.log" $PY benchmarks/augment_cost.py --device $DEV --graph
  RC_COST=$RC
fi

# ------------------------------------------------------------------------------------------- (b) throughput
JSONS=()
caps=(330 220)
[ "$DRY" = 1 ] && caps=(900 600)
for i in "${!WORKERS[@]}"; do
  w=${WORKERS[$i]}
  json="$WORK/throughput_w$w.json"
  rm -f "$json"
  once=()
  ((i > 0)) && once=(--no-compute-alone) # the compute alone does not depend on the workers: timed in the first call
  run "throughput, $w workers" "${caps[$i]}" "$WORK/throughput_w$w.log" $PY benchmarks/throughput.py "${TP[@]}" \
    --precision bf16 --channels-last --compile no,default,reduce-overhead --pipelines host,device --workers "$w" \
    ${once[@]+"${once[@]}"} ${USB_SITE:+--usb-site "$USB_SITE"} --json "$json"
  JSONS+=("$json")
done

# ------------------------------------------------------------------------------------------- (c) the table
$PY benchmarks/gpu_suite_table.py "$TABLE" "${JSONS[@]}" --title "$TITLE" \
  --check "device augmentation vs host ops and views on $DEV (augment_fidelity.py)=$WORK/augment_fidelity.log:$RC_FID" \
  --check "augmentation cost and CUDA-vs-CPU bit equality (augment_cost.py --graph)=$WORK/augment_cost.log:$RC_COST" \
  >>"$LOG" 2>&1
cp "$TABLE" "$WORK/" 2>/dev/null
say "table: $TABLE (and $WORK/$(basename "$TABLE")); JSON and logs in $WORK; ${SECONDS}s in all"
cat "$TABLE"
