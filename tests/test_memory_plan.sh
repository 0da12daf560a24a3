# The --dry-run memory plan against the storage each policy keeps, counted by hand per parameter: the
# policy's weights, gradients and optimizer state, plus what both backends add, an fp32 copy of 16-bit
# weights for the passes to read and an fp32 gradient scratch under bf16 gradients. A build with nvcc also
# plans the CUDA backend without a GPU (--device cuda --dry-run), which stores the same quantities.
source "$(dirname "$0")/e2e_common.sh"

# plan DEVICE POLICY: "<num_params> <state MiB> <activation MiB>" of the tiny_cpu config's plan.
plan() {
  "$train_gpt" --config "$root/configs/tiny_cpu.json" --device "$1" --dry-run --set precision.policy="$2" |
    python3 -c 'import re, sys
text = sys.stdin.read()
state = re.search(r"state\s+([0-9.]+) MiB\s+\((\d+) params", text)
acts = re.search(r"activations\s+([0-9.]+) MiB", text)
print(state.group(2), state.group(1), acts.group(1))'
}

# Bytes per parameter, by hand: weights + compute copy + gradients (+ scratch) + optimizer state.
declare -A by_hand=(
  [fp32]=$((4 + 4 + 4 + 4))                    # fp32 weights (read directly), fp32 grads, m, v
  [mixed]=$((2 + 4 + 4 + 4 + 4 + 4))           # bf16 weights, copy, fp32 grads, master, m, v
  [bf16]=$((2 + 4 + 2 + 4 + 2 + 2))            # bf16 weights, copy, bf16 grads, scratch, m, v
  [collage_plus]=$((2 + 4 + 2 + 4 + 2 + 2 + 4))  # ... + MCF lo, bf16 m, v as a bf16 pair
  [kahan]=$((2 + 4 + 2 + 4 + 2 + 2 + 2))       # ... + Kahan c, bf16 m, v
)
devices=cpu
[ -n "$(command -v nvcc)" ] && devices="cpu cuda"
for device in $devices; do
  for policy in "${!by_hand[@]}"; do
    read -r params state_mib acts_mib <<<"$(plan "$device" "$policy")" || fail "$device $policy: no plan"
    python3 - "$params" "$state_mib" "${by_hand[$policy]}" <<'PY' || fail "$device $policy: state $state_mib MiB, by hand ${by_hand[$policy]} bytes/param"
import sys
params, state_mib, per_param = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
expected = params * per_param / 2**20
sys.exit(0 if abs(state_mib - expected) <= 0.05 + 1e-3 * expected else 1)
PY
  done
  echo "$device: state plans match the hand counts for ${!by_hand[*]}"
done
if [ "$devices" = "cpu cuda" ]; then
  read -r _ _ cpu_acts <<<"$(plan cpu mixed)"
  read -r _ _ cuda_acts <<<"$(plan cuda mixed)"
  python3 -c 'import sys; sys.exit(0 if float(sys.argv[2]) > float(sys.argv[1]) else 1)' "$cpu_acts" "$cuda_acts" ||
    fail "the CUDA plan's activations ($cuda_acts MiB) should exceed the CPU's ($cpu_acts MiB): attention scratch, workspace"
  echo "cuda: activations $cuda_acts MiB (cpu $cpu_acts MiB)"
fi
echo ok
