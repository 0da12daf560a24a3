#!/usr/bin/env bash
# Installs what lpgpt needs and is missing: a C compiler and make, cJSON (libcjson-dev), Python 3, Open MPI
# (openmpi-bin, libopenmpi-dev), and the `fortunes` corpus that the default data is made from. Uses apt-get
# when it is allowed (root or sudo); otherwise says what to install. Extra Debian packages can be named in LPGPT_EXTRA_PACKAGES.
set -euo pipefail

missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
[ -f /usr/include/cjson/cJSON.h ] || missing+=(libcjson-dev)
[ -d /usr/share/games/fortunes ] || missing+=(fortunes)
# Open MPI: data-parallel training under mpirun, and its test (tests/test_distributed.sh).
command -v mpirun >/dev/null 2>&1 || missing+=(openmpi-bin)
command -v mpicc >/dev/null 2>&1 || missing+=(libopenmpi-dev)
for p in ${LPGPT_EXTRA_PACKAGES:-}; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done

if ((${#missing[@]} == 0)); then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo)
else
  echo "lpgpt needs these Debian packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "lpgpt needs: ${missing[*]} (no apt-get here: install them with your package manager)" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq || true
"${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
