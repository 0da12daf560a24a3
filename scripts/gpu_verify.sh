#!/usr/bin/env bash
# GPU verification in one command, for a lent GPU machine that starts bare (no cJSON, no fortunes corpus,
# no network). Two halves:
#   scripts/gpu_verify.sh --fetch   here, with network: downloads cJSON's .deb files into .deps/ and
#                                   prepares data/fortunes/ (both git-ignored: carry them to the GPU machine)
#   scripts/gpu_verify.sh           there: unpacks .deps/, builds for sm_90, runs `make test-gpu` and
#                                   `make bench`, and writes test-gpu.log, bench.log and env.txt to $OUT
#                                   (or runs/gpu_verify/)
# With the device tool: carry [".deps", "data/fortunes"] and run `scripts/gpu_verify.sh`.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch" ]; then
  set -e
  mkdir -p .deps
  (cd .deps && apt-get download libcjson1 libcjson-dev)
  [ -f data/fortunes/tokenizer.bin ] || python3 scripts/prepare_data.py
  du -sh .deps data/fortunes
  exit 0
fi

out=${OUT:-runs/gpu_verify}
mkdir -p "$out"
prefix=/tmp/lpgpt-deps
status=0
if ! [ -f /usr/include/cjson/cJSON.h ]; then
  ls .deps/*.deb >/dev/null 2>&1 || { echo "no cJSON here and no .deps/*.deb: run scripts/gpu_verify.sh --fetch first" >&2; exit 1; }
  for deb in .deps/*.deb; do dpkg -x "$deb" "$prefix"; done
  export CJSON_PREFIX=$prefix
  export LD_LIBRARY_PATH=$prefix/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
{
  date -u +%Y-%m-%dT%H:%MZ
  git rev-parse HEAD 2>/dev/null || echo "commit unknown"
  nvidia-smi -L
  nvcc --version | tail -1
  command -v mpirun || echo "mpirun: not installed"
} > "$out/env.txt" 2>&1
cat "$out/env.txt"

make -j"$(nproc)" CUDA_ARCH='-gencode arch=compute_90,code=sm_90' 2>&1 | tail -5
[ -f data/fortunes/tokenizer.bin ] && export LPGPT_TEST_DATA=${LPGPT_TEST_DATA:-$PWD/data/fortunes}
make test-gpu 2>&1 | tee "$out/test-gpu.log" || status=1
${SKIP_BENCH:+true} make bench 2>&1 | tee "$out/bench.log" || status=1
exit $status
