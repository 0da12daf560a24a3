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
./train_gpt --config tiny_cpu.json "$@"
