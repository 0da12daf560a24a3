# Policy axes end to end: e8m7 matmuls with nearest rounding are bf16 matmuls, bit for bit; a setting that the
# policy's matmuls ignore is refused; fp32 equals fp32 with every axis spelled out; fused and materialized
# attention agree closely, and fused refuses fp8 attention.
source "$(dirname "$0")/e2e_common.sh"
prepare_test_data
write_tiny_config

run() {  # run NAME ARGS...: 20 steps of the tiny config into $tmp/NAME
  local name=$1; shift
  "$train_gpt" --device cpu --config "$tmp/tiny.json" --set output.dir="$tmp/$name" "$@" >/dev/null
}
same_losses() { cmp -s <(losses "$tmp/$1") <(losses "$tmp/$2") || fail "$1 and $2 give different losses"; }

run bf16 --set precision.policy=bf16
run bf16_e8m7 --set precision.policy=bf16 --set precision.matmul=e8m7 --set precision.matmul_rounding=nearest
same_losses bf16 bf16_e8m7

# refused PATTERN ARGS...: the run fails at once with PATTERN on stderr and writes nothing (a sweep over a
# setting that changes nothing would train the same model again and again).
refused() {
  local pattern=$1; shift
  if "$train_gpt" --device cpu --config "$tmp/tiny.json" --set output.dir="$tmp/refused" "$@" >/dev/null 2>"$tmp/err"; then
    fail "accepted $*"
  fi
  grep -q -- "$pattern" "$tmp/err" || fail "$*: stderr does not match '$pattern': $(cat "$tmp/err")"
  [ ! -e "$tmp/refused" ] || fail "$*: wrote $tmp/refused"
}
refused 'precision.scaling has no effect.*bf16' --set precision.policy=bf16 --set precision.scaling=current
refused 'precision.amax_history has no effect' --set precision.policy=bf16 --set precision.amax_history=4
refused 'precision.margin has no effect' --set precision.policy=bf16 --set precision.margin=2
refused 'precision.matmul_rounding = toward_zero has no effect.*bf16' --set precision.policy=bf16 \
  --set precision.matmul_rounding=toward_zero
refused 'precision.matmul_rounding = toward_zero has no effect.*fp8' --set precision.policy=fp8_sim \
  --set precision.matmul_rounding=toward_zero
refused 'precision.amax_history has no effect.*current scaling' --set precision.policy=fp8_sim \
  --set precision.scaling=current --set precision.amax_history=4
refused 'precision.scaling has no effect.*fp32' --set precision.policy=fp32 --set precision.scaling=current

# matmul_rounding acts where ANY matmul site is eXmY: accepted with only the LM head eXmY, refused with none.
run head_e8m3 --set precision.policy=mixed --set precision.lm_head=e8m3 --set precision.matmul_rounding=bf16_truncate
refused 'precision.matmul_rounding = bf16_truncate has no effect.*bf16, bf16, bf16' --set precision.policy=mixed \
  --set precision.matmul_rounding=bf16_truncate
refused 'precision.margin has no effect' --set precision.policy=mixed --set precision.attention=e4m3 \
  --set precision.margin=2
run attention_fp8_margin --set precision.policy=mixed --set precision.attention=fp8 --set precision.margin=2 \
  --set precision.attention_impl=materialized
# e8m7 masked from bf16 is bf16 at every site at once (the bit-width sweep's e8m7 row is the bf16 baseline).
run mixed --set precision.policy=mixed
run mixed_e8m7 --set precision.policy=mixed --set precision.matmul=e8m7 --set precision.attention=e8m7 \
  --set precision.lm_head=e8m7 --set precision.matmul_rounding=bf16_truncate
same_losses mixed mixed_e8m7
# bf16 activations are the bf16 family's default and act: fp32 activations give other losses.
run mixed_act32 --set precision.policy=mixed --set precision.activations=fp32
cmp -s <(losses "$tmp/mixed") <(losses "$tmp/mixed_act32") && fail "activations=fp32 gave the bf16-activation losses"

run fp32 --set precision.policy=fp32
run fp32_explicit --set precision.policy=fp32 --set precision.weights=fp32 --set precision.update=exact \
  --set precision.adam_m=fp32 --set precision.adam_v=fp32 --set precision.grads=fp32 --set precision.matmul=fp32 \
  --set precision.attention=fp32 --set precision.lm_head=fp32 --set precision.activations=fp32 \
  --set precision.scaling=delayed --set precision.margin=0
same_losses fp32 fp32_explicit

# And the axes do act where they are used: e8m3 toward zero is not bf16.
run bf16_e8m3 --set precision.policy=bf16 --set precision.matmul=e8m3 --set precision.matmul_rounding=toward_zero
cmp -s <(losses "$tmp/bf16") <(losses "$tmp/bf16_e8m3") && fail "e8m3 toward zero gave the bf16 losses"
echo ok

# precision.attention_impl: fused (the default) and materialized are one attention computed two ways, so their
# losses agree to fp32 rounding, amplified over 20 training steps (measured: under 1e-8 under fp32, 3e-5
# under mixed, where a probability near a bf16 rounding boundary may round the other way); the tolerances
# leave 30x room. (The attention's own correctness is tests/test_attention_tiled.c's.) fp8 attention, scaled per query row, exists only materialized.
close_losses() {  # close_losses A B TOLERANCE: every step's loss within TOLERANCE (relative)
  python3 -c 'import sys
a, b = ([float(x) for x in open(f)] for f in sys.argv[1:3])
worst = max(abs(x - y) / abs(y) for x, y in zip(a, b))
sys.exit(0 if len(a) == len(b) == 20 and worst <= float(sys.argv[3]) else "worst relative difference %g" % worst)' \
    <(losses "$tmp/$1") <(losses "$tmp/$2") "$3" || fail "$1 and $2: losses not within $3"
}
run fp32_materialized --set precision.policy=fp32 --set precision.attention_impl=materialized
close_losses fp32 fp32_materialized 1e-5
# (At GPT-2's small init the fp32 losses may agree to the 9 digits logged; the gradient norms do not.)
grad_norms() { python3 -c 'import json, sys
print([json.loads(line).get("grad_norm") for line in open(sys.argv[1])])' "$tmp/$1/log.jsonl"; }
[ "$(grad_norms fp32)" != "$(grad_norms fp32_materialized)" ] || fail "attention_impl=materialized changed nothing"
run mixed_materialized --set precision.policy=mixed --set precision.attention_impl=materialized
close_losses mixed mixed_materialized 1e-3
refused 'precision.attention_impl = fused does not take fp8 attention.*set precision.attention_impl = materialized' \
  --set precision.policy=mixed --set precision.attention=fp8
