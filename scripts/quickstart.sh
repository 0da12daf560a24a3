#!/usr/bin/env bash
# The README's first command: install what is missing, build, prepare the default data (offline, from
# Debian's fortunes), and train configs/tiny_cpu.json on the GPU if there is one, else on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
make
if [ ! -f data/fortunes/tokenizer.bin ]; then
  python3 scripts/prepare_data.py
fi
# Run again without arguments, the quickstart continues its earlier run (or says that it is complete)
# instead of refusing the directory that run owns.
if [ $# = 0 ]; then
  run_dir=$(./train_gpt --config tiny_cpu.json --print-config |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["output"]["dir"])')
  if compgen -G "$run_dir/checkpoints/step_*.ckpt" >/dev/null; then exec ./train_gpt --resume "$run_dir"; fi
fi
exec ./train_gpt --config tiny_cpu.json "$@"
