#!/usr/bin/env bash
# Every GPU line of the speed issue, in one call on one GPU (written for an H200):
#
#     bash bench/gpu.sh              # on the GPU machine, from the repository root
#     bash bench/gpu.sh --steps 1,5  # only these of the numbered steps below (bench/device_run.sh)
#     bash bench/gpu.sh --budget 420 # end within 420 s (the call's limit: bench/device_run.sh 3)
#     bash bench/gpu.sh --rehearse   # the same steps at tiny sizes on the CPU (checks the wiring only)
#
# A GPU is lent only now and then, for ~15 minutes in all (machine start included), so each step has
# its own time limit and a failed step does not stop the others; every line it prints is a number to
# copy into docs/performance.md with the date, the device and this command. The steps' own limits
# add up to ~20 minutes, more than a session leaves for this call: with --budget S a step runs under
# the smaller of its limit and what is left of S (5 s kept for the end), and a step with under 30 s
# left is skipped, saying so, so that the call ends on time with everything it printed (the steps
# run in their order: cut, the last ones go). TRL and Liger-Kernel are optional peers: the TRL side
# runs in $TRL_PYTHON (a venv with trl, transformers and liger-kernel installed from wheels carried
# to the machine, which has no network); without it those rows are skipped and said so. The real
# checkpoint must be at checkpoints/smollm2-135m (python -m model.gguf_import --out
# checkpoints/smollm2-135m, before the GPU session).
set -uo pipefail
cd "$(dirname "$0")/.."
rehearse=0; steps=1,2,3,4,5,6; deadline=
while [ $# -gt 0 ]; do
  case $1 in
    --rehearse) rehearse=1; shift ;;
    --steps) steps=$2; shift 2 ;;
    --budget) deadline=$((SECONDS + $2)); shift 2 ;;
    *) echo "usage: bash bench/gpu.sh [--rehearse] [--steps 1,2,...] [--budget SECONDS]" >&2; exit 2 ;;
  esac
done
step() {
  local t=$1; shift
  if [ -n "$deadline" ]; then
    local left=$((deadline - SECONDS - 5))
    if [ "$left" -lt 30 ]; then echo; echo "== skipped, ${left}s left of --budget: $*"; return; fi
    [ "$left" -lt "$t" ] && t=$left
  fi
  echo; echo "== $* (limit ${t}s)"; timeout "$t" "$@" || echo "!! exit $? ($*)"
}
only() { [[ ",$steps," == *",$1,"* ]]; }     # only N: step N was asked for

python - <<'EOF'
import torch, triton, platform
dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"== {dev}; torch {torch.__version__}; triton {triton.__version__}; python {platform.python_version()}")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

if [ $rehearse = 1 ]; then
  only 2 && step 300 python -m bench.train_speed --preset gpu_1p7b --device cpu --layers 1 --max_length 64 --steps 1 --warmup 1
  only 3 && step 300 python -m bench.decode_speed --batches 1,2 --max_new_tokens 4 --reps 1
  only 3 && step 300 python -m bench.decode_speed --model smollm2-1.7b --layers 1 --batches 1,2 --ours bf16,bf16_compiled --theirs default --max_new_tokens 4 --reps 1
  exit 0
fi

# 1. the compiled Triton kernels against their torch references (the CPU runs them interpreted)
only 1 && step 120 env TRITON_INTERPRET=0 python -m pytest -q -p no:cacheprovider tests/kernels/test_triton.py
# 2. ORPO and DPO steps at SmolLM2-1.7B's shape (bs 4, max_length 1024, bf16): ours, TRL, TRL + Liger;
#    peak memory. Ten processes, each loading the 1.7B model (DPO's TRL side twice): the limit is an
#    estimate, no GPU having run it yet; cut, it prints the rows it measured
only 2 && step 300 python -m bench.train_speed --preset gpu_1p7b --largest_batch skip
# 3. decoding at SmolLM2-1.7B's shape against transformers' generate at its default (bf16), with the
#    bandwidth floor: eager at batch 1 / 8 / 32, then the compiled step (CUDA graphs) at batch 1
only 3 && step 150 python -m bench.decode_speed --model smollm2-1.7b --batches 1,8,32 --ours bf16 --theirs default --max_new_tokens 64 --reps 1
only 3 && step 150 python -m bench.decode_speed --model smollm2-1.7b --batches 1 --ours bf16_compiled --theirs default --max_new_tokens 128 --reps 1
# 4. the share of a Self-Judge step spent sampling (the log's t_sample / step_s)
only 4 && step 90 python train.py --method self_judge --init_from checkpoints/smollm2-135m --task instruct \
    --max_steps 6 --batch_size 8 --gen_max_tokens 64 --log_every 1 --final_eval false \
    --out_dir out/gpu_self_judge
# 5. DDP and FSDP2 under torchrun on this one GPU
only 5 && step 120 python -m pytest -q -p no:cacheprovider tests/train/test_scale.py
# 6. the largest batch that fits at max_length 2048, ours and each TRL setting (doubling, a process
#    per side, TRL's loading the model again for each try): the longest step, so the last
only 6 && step 300 python -m bench.train_speed --preset gpu_1p7b --largest_batch only
exit 0
