#!/usr/bin/env bash
# A GPU session, on the lent machine, in three calls made one right after another (it is given back
# 30 s after a call ends, and what the calls left on it goes with it). bench/device_pack.sh made
# .device/ here first; each call carries its part of it (the device tool's `carry`):
#
#   call  command                          carry                                          about
#   1     bash bench/device_run.sh 1       .device/gguf.part.0                            10 s
#   2     bash bench/device_run.sh 2       .device/gguf.part.1 .device/gguf.sha256 .device/whl   8 min
#   3     BUDGET=S bash bench/device_run.sh 3   .device/whl                               S s
#
# 1: keeps the checkpoint's first half, nothing else (the machine's start is the cost here).
# 2: joins and converts the checkpoint, then the real-model table (experiments/compare.py --preset
#    instruct, three seeds side by side), the first thing a device is for; cut at 7 min. Call 2
#    again on the same machine continues it (compare.py resumes from the runs it finished).
# 3: bench/gpu.sh (the compiled kernel tests, ORPO/DPO against TRL and TRL + Liger, decoding, the
#    Self-Judge sampling share, torchrun, the largest batch at 2048 tokens) within BUDGET seconds
#    (default 470): the calls' limits and a machine start add up to more than a session's 15 min,
#    so call 3 gets what is left. Set BUDGET to the call's timeout_s, or to status's budget_left_s
#    less a minute (transfers) where that is smaller; gpu.sh then ends inside it with what it
#    printed, its last steps skipped, where a call cut by the device tool would lose the step under
#    way. What each call prints is also in $OUT/.
# `bash bench/device_run.sh N --rehearse`: the same plumbing on the CPU, at tiny sizes.
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: bash bench/device_run.sh 1|2|3 [--rehearse]}
rehearse=0; [ "${2:-}" = "--rehearse" ] && rehearse=1
OUT=${OUT:-out/device}; mkdir -p "$OUT"
keep=$PWD/.device-keep          # ignored by git: kept between calls while the machine stays lent
mkdir -p "$keep/bin"
# the project's commands call `python`; the GPU image has python3 (the one with torch) only
printf '#!/bin/sh\nexec %s "$@"\n' "${PYTHON:-$(command -v python3)}" > "$keep/bin/python"
chmod +x "$keep/bin/python"
export PATH="$keep/bin:$PATH" PYTHONUNBUFFERED=1
python -c "import sys, torch; print('==', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"

peers() {   # the carried wheels into $keep/site (ours: gguf), and a venv for TRL's side that sees them
  [ -d .device/whl ] || { echo "!! no .device/whl: carry it"; return 1; }
  python -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$keep/site" \
      --python-version 3.12 --only-binary=:all: .device/whl/*.whl || return 1
  export PYTHONPATH="$keep/site"
  if [ -z "${TRL_PYTHON:-}" ]; then
    # bench/train_speed.py runs TRL's side under `python -I`, which ignores PYTHONPATH but reads .pth
    # files: a venv whose .pth names the wheels and python's own site-packages (the image's python3
    # is itself a venv, whose packages --system-site-packages would not reach)
    python -m venv --without-pip "$keep/trl" || return 1
    # one `import` line: site.addsitedir also runs the .pth files of the folders it adds
    python -c "import site; print('import site; ' + '; '.join(f'site.addsitedir({d!r})' for d in
               ['$keep/site', *site.getsitepackages()]))" \
        > "$(echo "$keep"/trl/lib/python3*/site-packages)/nanoalign-peers.pth" || return 1
    export TRL_PYTHON="$keep/trl/bin/python"
  fi
}

case $stage in
1)
  cp .device/gguf.part.0 "$keep/" && echo "== kept the first half" || { echo "!! no .device/gguf.part.0: carry it"; exit 1; }
  ;;
2)
  [ -f "$keep/gguf.part.0" ] || { echo "!! the first half is not here: this is a new machine (the last"
                                   echo "   was given back between the calls); make call 1 again, then 2"; exit 1; }
  peers || exit 1
  cat "$keep/gguf.part.0" .device/gguf.part.1 > "$keep/smollm2.gguf"
  [ "$(sha256sum < "$keep/smollm2.gguf" | cut -d' ' -f1)" = "$(cat .device/gguf.sha256)" ] \
      || { echo "!! the joined GGUF is not the packed one"; exit 1; }
  ckpt=checkpoints/smollm2-135m; [ $rehearse = 1 ] && ckpt=$keep/smollm2-135m
  python -m model.gguf_import --gguf "$keep/smollm2.gguf" --out "$ckpt" || exit 1
  if [ $rehearse = 1 ]; then
    python -m experiments.compare --preset instruct_smoke --seeds 1 --start "$ckpt" --n_test 2 \
        --answer_tokens 4 --out "$keep/compare" 2>&1 | tail -25 | tee "$OUT/call2.log"
  else
    timeout 420 python -m experiments.compare --preset instruct --seeds 1,2,3 --jobs 3 2>&1 \
        | tee "$OUT/call2.log"
    tar -czf "$OUT/compare_results.tgz" out/compare/instruct/*/result.json out/compare/instruct/seed-*.log
  fi
  ;;
3)
  peers || exit 1
  steps=1,2,3,4,5,6
  budget=$(( ${BUDGET:-470} - SECONDS ))                    # what is left of this call's seconds
  if [ ! -f checkpoints/smollm2-135m/config.json ]; then   # steps 2-4 and 6 read it (its tokenizer, or all)
    echo "!! no checkpoints/smollm2-135m: call 2 did not convert it on this machine; steps 1 and 5 only"
    steps=1,5
  fi
  if [ $rehearse = 1 ]; then bash bench/gpu.sh --rehearse --steps 2 --budget $budget 2>&1 | tee "$OUT/call3.log"
  else bash bench/gpu.sh --steps $steps --budget $budget 2>&1 | tee "$OUT/call3.log"; fi
  ;;
*) echo "stage 1, 2 or 3" >&2; exit 2 ;;
esac
