// A roofline model of one training step of the CUDA backend's design (issue 16), printed by
// `--device cuda --dry-run`: per op group the FLOPs, the bytes of device-memory traffic (reads + writes) and
// the time, and from them the micro-step time, tokens/s and the MFU ceiling. It models the design, not a
// measurement: every kernel runs at its roofline, time_k = max(flops_k / peak, bytes_k / bandwidth), with the
// peak of the kernel's precision, and a group's time is the sum over its kernels. Caches are not modelled
// (each kernel reads its inputs from device memory once; the fused attention's K/V re-reads per query tile
// come from L2 and are not counted), nor launch overheads, nor communication between ranks.
//
// Notation: N = B*T rows, C = n_embd, L layers, NH heads, hs = C/NH, Vp = padded vocabulary.
// A = bytes of a stored activation: 2 under bf16 activations, 4 under fp32; activation gradients are fp32 (4).
// W = bytes of a stored weight as the products read it: 2 for bf16 weights, 4 otherwise (DQT: each grid
// matrix slice is decoded to fp32 before each product that reads it, a pass reading 1 and writing 4 per weight).
// op(f) = bytes of a product operand of format f: 2 for bf16, 4 for fp32 and for the simulated formats (fp8,
// eXmY), whose cast values stay fp32.
// A cast pass of n values stored at s bytes into format f reads n*s and writes n*op(f) (fp8 reads its source
// once more, for the amax); it runs only where the product cannot read the values as they are: op(f) != s,
// or f simulated. Products run at the bf16 peak under bf16, at the TF32 peak under fp32 with allow_tf32, and
// at the fp32 peak otherwise (simulated formats never use TF32).
//
// Per micro-step (B sequences of T tokens):
//  matmuls:   each block linear (IN -> OUT: qkv C -> 3C, attproj C -> C, fc C -> 4C, fcproj 4C -> C) runs 3
//             products of 2*N*IN*OUT FLOPs: forward (reads its input and weight operands, writes N*OUT*A),
//             dinp = dout @ W (reads dout's operand and W, writes N*IN*4), dW += dout^T @ inp. The LM head
//             the same with IN = C, OUT = Vp (logits written at A; dlnf = dlogits @ wte; dwte += ...).
//             Weight gradients: fp32 ones are accumulated in place (read + write 4 per element); bf16 ones
//             are written to an fp32 scratch (4), then rounded once into their storage (element-wise: read
//             4, read + write 2).
//  attention: fused: forward reads qkv (N*3C*A), writes out (N*C*A) and the row log-sum-exp (NH*N*4);
//             backward: D = rowsum(dout * out) (reads N*C*(4 + A), writes NH*N*4), then a dK/dV kernel and a
//             dQ kernel, each reading qkv, dout (N*C*4), lse and D; under a bf16 block-linear format they write
//             dqkv only as its bf16 operand (N*3C*2) and the partials of its column sums (qkv's bias
//             gradient), else in fp32 (N*3C*4). FLOPs: 2*hs per (query, key) pair
//             per product; forward 3 products (two QK^T passes, PV), backward 7 (dK/dV: S, dP, dV, dK; dQ: S,
//             dP, dQ). The pairs are those of whole query tiles of 64 rows: each tile meets every key up to its
//             last row, so the diagonal tile is counted whole, its masked half included (T = 1024: 136 of the
//             256 tiles, 6% above T^2/2).
//             materialized (today's kernels): per head copies of q, k, v (read N*3C*A, write N*3C*op), the
//             (B, NH, T, T) scores and probabilities in fp32 (S = B*NH*T*T), full-square batched products
//             (2*T*T*hs FLOPs per head each: forward QK^T and PV, backward 4), softmax forward (reads S*4,
//             writes S*4, plus S*2 under bf16), head merges and splits in fp32, the backward's casts of
//             dout and of the probabilities under bf16, softmax backward (reads 2*S*4, writes S*4, or S*2
//             under bf16). Simulated formats' attention casts are not modelled (their operands count as fp32).
//  element-wise: encoder (reads N*4 tokens and 2*N*C*W of wte, wpe rows; writes N*C*A), layernorms (plain:
//             reads N*C*A, writes N*C*A + 2*N*4 statistics; fused with the residual add: reads 2*N*C*A,
//             writes the sum and the output, 2*N*C*A + 2*N*4), GELU (reads and writes N*4C*A; its output
//             lives in a one-layer scratch and the backward recomputes it), layernorm
//             backward (reads dout N*C*4, input N*C*A, statistics; adds into dresidual, read + write N*C*4;
//             the weight and bias partials come from the same rows in the same kernel, not counted again;
//             the legacy design re-read dout and input for them, N*C*(4 + A)), GELU backward (under a bf16
//             format one pass recomputes GELU and forms dfch's bf16 operand and column partials: reads
//             N*4C*(4 + A), writes N*4C*(A + 2); otherwise GELU's recomputation, then reads N*4C*(4 + A) and
//             writes N*4C*4), the cast passes (under a bf16 format, fcproj's and attproj's output gradient is
//             cast with its column partials in one pass: reads N*C*4, writes N*C*2), the bias gradients'
//             column sums where no producer formed their partials (reads N*OUT*4; the partials themselves,
//             N/64*OUT floats, are not counted), the bf16 gradients' rounding, the
//             encoder backward (reads N*4 tokens and dresidual N*C*4, adds rows into dwte and dwpe: read +
//             write 2*N*C*4 each; under bf16 gradients wpe's scratch is zeroed and rounded).
//             Output-gradient operands: fcproj's and attproj's (dresidual) are cast; fc's and qkv's are
//             written by their producers (GELU backward, fused attention backward) under bf16, with their
//             column partials.
//  loss:      classifier forward (reads the logits N*Vp*A and N*4 targets, writes N*(2*4 + 4): max, sum,
//             loss); classifier backward (reads logits, statistics, targets; writes the logits' gradient in
//             place: its bf16 operand N*Vp*2 under a bf16 LM head, else fp32 N*Vp*4, cast once for a simulated
//             format). Under fp32 activations (N > LOGIT_CHUNK_ROWS) the logits come in chunks and are never
//             stored whole: the backward forms them again before the classifier's backward, and again (with
//             the head's operands cast again and the classifier's backward again) for wte's gradient at the
//             end: two more LM-head products (matmuls) and one more classifier backward.
// Per optimizer step (reported per step, and amortised over the accumulation steps in the micro-step's
// time and traffic): the gradient norm reads the gradients; the AdamW step reads the gradients and reads
// and writes every stored quantity (weights, master / MCF lo / Kahan c, m, v: the policy table's bytes
// per parameter less the gradients'); the gradients are zeroed for the next step. 1-D parameters'
// traffic of the block kernels (layernorm weights, biases: O(C) per kernel) is not counted.
// FLOPs of the kernels that are not products are nominal (a few per element, fp32 peak); they are memory
// bound by orders of magnitude, and the nominal counts do not change the time.
//
// "Today's design" (legacy_design = 1, the CUDA backend before issue 16): fp32 activations, materialized
// attention, the GELU output stored per layer (no recompute), and no producer writes an operand: every
// bf16 product reads a cast copy of its activation operand (inputs cast again in the backward), the logits'
// gradient is written in fp32 and cast twice (once per LM-head product). Its zeroing memsets and "+="
// read-backs are not counted, so its traffic is an underestimate.
//
// MFU ceiling = model FLOPs per token x modelled tokens/s / the bf16 peak, with model FLOPs per token
// = 6*P + 6*L*C*T (llm.c's count, and bench/bench.sh's: P = every parameter, wte once; causal attention
// counted at half of PaLM's 12*L*C*T).
#ifndef LP_STEP_MODEL_H
#define LP_STEP_MODEL_H

#include "model.h"
#include "policy.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    double peak_bf16;  // FLOP/s of dense bf16 tensor products
    double peak_tf32;  // FLOP/s of fp32 products under allow_tf32
    double peak_fp32;  // FLOP/s without tensor cores: fp32 and simulated-format products, element-wise kernels
    double bandwidth;  // bytes/s of device memory
} DeviceSpec;

// H100 SXM: bf16 989.4e12 (dense), TF32 494.7e12, fp32 66.9e12, HBM3 3.35e12 bytes/s.
DeviceSpec device_spec_h100(void);
// The H100 defaults with the environment's overrides: LPGPT_PEAK_BF16_FLOPS, LPGPT_PEAK_TF32_FLOPS,
// LPGPT_PEAK_FP32_FLOPS, LPGPT_BANDWIDTH (positive numbers, e.g. 3.35e12). fatal() naming the variable on a
// value that is not one.
DeviceSpec device_spec_from_environment(void);

typedef struct {
    const ParamTable *table;
    int B, T;
    int accum_steps;               // micro-steps per optimizer step on each rank
    MatmulFormat linear;           // the block linears' operands
    MatmulFormat attention;        // the attention products' operands
    MatmulFormat lm_head;          // the LM head's operands
    int allow_tf32;
    int bf16_activations;
    int fused_attention;           // 0: materialized (B, NH, T, T) scores and probabilities
    int legacy_design;             // the CUDA backend before issue 16 (header comment); overrides the two above
    int weight_bytes;              // W: bytes of a stored weight as the products read it
    int grid_weights;              // DQT: each block matrix slice is decoded (codes read, 1 byte; fp32 written)
                                   // into a scratch before each product that reads it
    int bf16_gradients;
    double stored_state_bytes;     // all parameters' weights and optimizer state, as stored
    double gradient_bytes;         // all parameters' gradients, as stored
} StepModelInput;

// What a policy asks of the step (the CUDA backend's storage of its weights, gradients, optimizer state).
StepModelInput step_model_input(const Policy *policy, const ParamTable *table, int B, int T, int accum_steps);

typedef enum { STEP_MATMULS, STEP_ATTENTION, STEP_ELEMENTWISE, STEP_LOSS, STEP_OPTIMIZER, STEP_NUM_GROUPS } StepGroup;

typedef struct {
    double flops, bytes, seconds;
} StepCost;

typedef struct {
    StepCost groups[STEP_NUM_GROUPS];  // per micro-step; STEP_OPTIMIZER per optimizer step
    double micro_step_seconds;         // the micro-step's groups and 1/accum_steps of the optimizer's
    double bytes_per_token;            // the same traffic per token
    double tokens_per_second;
    double model_flops_per_token;      // 6*P + 6*L*C*T
    double mfu_ceiling;                // model FLOPs per second at the modelled time, of the bf16 peak
} StepModel;

StepModel step_model(const StepModelInput *in, const DeviceSpec *device);
const char *step_group_name(StepGroup group);

#ifdef __cplusplus
}
#endif

#endif
