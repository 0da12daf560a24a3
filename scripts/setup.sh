#!/usr/bin/env bash
# Installs what lpgpt needs and is missing: a C compiler and make, cJSON (libcjson-dev), Python 3 with pip,
# Open MPI (openmpi-bin, libopenmpi-dev), the `fortunes` corpus that the default data is made from, and the
# Python packages of requirements.txt (what the scripts and `make test` import). Uses apt-get and pip when
# it is allowed (root or sudo); otherwise says what to install. Extra Debian packages can be named in
# LPGPT_EXTRA_PACKAGES.
set -euo pipefail

missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
[ -f /usr/include/cjson/cJSON.h ] || missing+=(libcjson-dev)
[ -d /usr/share/games/fortunes ] || missing+=(fortunes)
# Open MPI: data-parallel training under mpirun, and its test (tests/test_distributed.sh).
command -v mpirun >/dev/null 2>&1 || missing+=(openmpi-bin)
command -v mpicc >/dev/null 2>&1 || missing+=(libopenmpi-dev)
for p in ${LPGPT_EXTRA_PACKAGES:-}; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done

if [ "$(id -u)" = 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo)
else
  sudo=(none)
fi

if ((${#missing[@]})); then
  if [ "${sudo[*]}" = none ]; then
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
fi

# Python packages: the distributions requirements.txt names that are not installed.
requirements="$(dirname "$0")/../requirements.txt"
mapfile -t absent < <(python3 - "$requirements" <<'PY'
import importlib.metadata, re, sys
for line in open(sys.argv[1]):
    name = re.split(r"[<>=!~;\[ ]", line.split("#")[0].strip())[0]
    if name:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            print(name)
PY
)
if ((${#absent[@]})); then
  if [ "${sudo[*]}" = none ] && [ -z "${VIRTUAL_ENV:-}" ]; then
    echo "lpgpt's scripts and tests need these Python packages: ${absent[*]}" >&2
    echo "install them with: python3 -m pip install -r requirements.txt" >&2
    exit 1
  fi
  echo "installing Python packages: ${absent[*]}"
  pip=(python3 -m pip install -q -r "$requirements")
  [ -n "${VIRTUAL_ENV:-}" ] || pip=("${sudo[@]}" "${pip[@]}")
  # Debian's own Python refuses pip outside a virtual environment (PEP 668) unless told otherwise.
  "${pip[@]}" 2>/dev/null || "${pip[@]}" --break-system-packages
fi
