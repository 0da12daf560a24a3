#!/usr/bin/env bash
# Runs each test program or script given, prints one line per test, and fails if any failed.
set -u
failed=()
for t in "$@"; do
  start=$(date +%s)
  case "$t" in
    *.py) cmd=(python3 "$t") ;;
    *.sh) cmd=(bash "$t") ;;
    *) cmd=("$t") ;;
  esac
  if out=$("${cmd[@]}" 2>&1); then
    printf 'PASS %-40s (%ss)\n' "$(basename "$t")" "$(( $(date +%s) - start ))"
  else
    printf 'FAIL %-40s (%ss)\n%s\n' "$(basename "$t")" "$(( $(date +%s) - start ))" "$out"
    failed+=("$t")
  fi
done
echo "$(( $# - ${#failed[@]} )) passed, ${#failed[@]} failed"
if ((${#failed[@]})); then
  echo "failed: ${failed[*]}"
  exit 1
fi
