// GPT-2 on one GPU: the layer sequence of src/cpu/gpt_cpu.c (same order, same operand casts, same fp8
// scaling rules) over the kernels of kernels/ and cuBLASLt products.
//
// Types. The forward and backward are templates over the activations' stored type (Act: float, or
// __nv_bfloat16 under precision.activations = bf16) and the weights' (Param: float, or __nv_bfloat16 for
// policies that store bf16 weights, read as stored: no fp32 copy). Each producer stores its output once in
// Act; a product whose operand format is the stored type reads the stored tensor itself, so under bf16
// activations, weights and products no cast pass runs before a product. Activation gradients are fp32, as on
// the CPU; the producers of the output gradients that feed bf16 products (the GELU backward, the fused
// attention backward, the classifier) write their bf16 operand as they go.
//
// Memory. Per layer the forward keeps ln1, qkv, atty, residual2, ln2, fch, residual3 (Act) and the
// layernorm statistics; attention keeps only each row's log-sum-exp (fused) or the (B, NH, T, T)
// probabilities (materialized); the GELU output lives for one layer and is recomputed in the backward.
#include "cuda/gpt_cuda.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/attention.cuh"
#include "kernels/classifier.cuh"
#include "kernels/column_sum.cuh"
#include "kernels/encoder.cuh"
#include "kernels/flash_attention.cuh"
#include "kernels/gelu.cuh"
#include "kernels/gradients.cuh"
#include "kernels/layernorm.cuh"
#include "kernels/matmul.cuh"
#include "kernels/quantize.cuh"

#include "cpu/ops.h"
#include "linear_casts.h"
#include "logit_chunks.h"
#include "param_storage.h"

// What the forward keeps for the backward (per-layer buffers stack L slices, as on the CPU), one layer's
// worth of activation gradients, the materialized attention's per-head scratch, the operand copies a
// product needs where its format is not the stored type, and under bf16 gradients the fp32 scratch where
// each tensor slice's gradient is formed before its rounding. void *: stored in Act.
typedef struct {
    void *encoded;      // (B, T, C)
    void *ln1;          // (L, B, T, C)
    float *ln1_mean;    // (L, B, T)
    float *ln1_rstd;    // (L, B, T)
    void *qkv;          // (L, B, T, 3C)
    void *atty;         // (L, B, T, C)
    float *att;         // materialized: (L, B, NH, T, T) probabilities; fused: (L, B, NH, T) log-sum-exps
    void *residual2;    // (L, B, T, C)
    void *ln2;          // (L, B, T, C)
    float *ln2_mean;    // (L, B, T)
    float *ln2_rstd;    // (L, B, T)
    void *fch;          // (L, B, T, 4C)
    void *residual3;    // (L, B, T, C)
    float *wte_grad_tail;  // bf16 gradients: what the stacked buffers above lack to hold wte's gradient (below)
    void *lnf;          // (B, T, C)
    float *lnf_mean;    // (B, T)
    float *lnf_rstd;    // (B, T)
    void *logits;       // (R, Vp) a chunk of R rows of logits (logit_chunk_rows: all B*T under bf16 activations)
    void *logit_grad;   // (R, Vp) in the LM head's operand type; the logits' own place when the types agree
    SoftmaxStats *softmax_stats;  // (B, T) each row's max and 1 / sum of exponentials
    float *losses;      // (B, T)
    void *gelu;         // (B, T, 4C) one layer's GELU output: the forward's, then the backward's recomputation
    void *proj_out;     // (B, T, C) a projection's output before its residual add; dead in the backward
    float *grad_scratch;  // bf16 gradients: proj_out's place (enlarged to hold any tensor slice but wte's)
    float *dresidual;   // (B, T, C)
    float *dln;         // (B, T, C)
    float *dqkv;        // (B, T, 3C), but under fused attention and bf16 block linears (its operand only)
    float *datty;       // (B, T, C)
    float *dfch;        // (B, T, 4C) GELU's input gradient (fc's output gradient, in place, but under bf16 block
                        // linears); the forward's bias scratch
    void *dfch_operand; // bf16 block linears: (B, T, 4C) fc's output gradient, only as its bf16 operand
    void *q, *k, *v;    // materialized: (B, NH, T, hs) each, in attention's operand type
    float *heads;       // materialized: (B, NH, T, hs) the attention output per head; in the backward, its gradient
    float *dq, *dk, *dv;  // materialized: (B, NH, T, hs)
    void *heads_cast;   // materialized, bf16 attention: (B, NH, T, hs) bf16 copy of the output gradient per head
    float *scores;      // materialized: (B, NH, T, T) the backward's probability and score gradients
    void *att_cast;     // materialized, bf16 attention: (B, NH, T, T) bf16 probabilities or score gradients
    void *copy_inp;     // a product input's operand where its format is not the stored type: (B, T, 4C) at most
    void *copy_weight;  // a weight's operand where its format is not the stored type: (max(4C, Vp), C) at most
    void *copy_dout;    // a block linear's output-gradient operand (format not fp32): (B, T, 4C)
    float *weight_decode;     // DQT: one grid matrix slice decoded, (4C, C) at most
    float *embedding_decode;  // DQT grid embeddings: wte (Vp, C) and wpe (block_size, C) decoded
    float *scratch;     // column sums and layernorm weight gradients
    float *amax;        // (1) fp8: a tensor's amax
    int *tokens;        // (B, T) inputs
    int *targets;       // (B, T)
} Activations;

#define NUM_ACTIVATION_BUFFERS 48

typedef struct {
    void **buffer;
    size_t bytes;
} ActivationBuffer;

// 256-byte aligned buffers: cuBLASLt's fastest algorithms want their operands so.
static size_t aligned_bytes(size_t bytes) { return (bytes + 255) / 256 * 256; }

static size_t format_bytes(MatmulFormat format) { return format == MATMUL_BF16 ? 2 : 4; }

// Whether a product in `format` can read a tensor stored in bf16 (stored_bf16) or fp32 as it is: fp32
// products read fp32, bf16 products bf16; the simulated formats (fp8, eXmY) always cast.
static int reads_stored(MatmulFormat format, int stored_bf16) {
    return (format == MATMUL_FP32 && !stored_bf16) || (format == MATMUL_BF16 && stored_bf16);
}

// Elements of the largest layer slice of any tensor but wte, and at least 2C (a layernorm's weight and bias
// gradients side by side): the gradient scratch under bf16 gradients.
static size_t largest_slice_but_wte(const ParamTable *table) {
    size_t largest = 2 * (size_t)table->shape.n_embd;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        size_t slice = table->tensors[t].numel / (size_t)param_slices(table, t);
        if (t != PARAM_WTE && slice > largest) largest = slice;
    }
    return largest;
}

static int fused_attention(const Policy *policy) { return policy->attention_impl == ATTENTION_FUSED; }

// Where the fused backward puts the partials of dqkv's column sums: after its row terms D (B, NH, T) in the
// scratch.
static size_t flash_partials_offset(int B, int T, int NH) { return ((size_t)B * NH * T + 63) / 64 * 64; }

// The LM head's rows at a time: all B*T under bf16 activations (the bf16 logits are stored whole and the
// backward reads them again), else LOGIT_CHUNK_ROWS (at least B, for gpt_cuda_logits_at): the fp32 (B*T, Vp)
// logits are never stored whole, and the backward forms each chunk again (the same product, the same bits).
static int logit_chunk_rows(const Policy *policy, int B, int T) {
    int N = B * T, rows = LOGIT_CHUNK_ROWS > B ? LOGIT_CHUNK_ROWS : B;
    if (policy->activations == ACTIVATIONS_BF16 || rows > N) return N;
    return rows;
}

// The one description of the activation buffers that allocation and the memory plan both read.
static int activation_buffers(Activations *a, const ParamTable *table, const Policy *policy, int B, int T,
                              ActivationBuffer list[NUM_ACTIVATION_BUFFERS]) {
    const ModelShape *s = &table->shape;
    size_t L = (size_t)s->n_layer, C = (size_t)s->n_embd, NH = (size_t)s->n_head, Vp = (size_t)s->padded_vocab;
    size_t N = (size_t)B * T, TT = (size_t)B * NH * (size_t)T * (size_t)T, F = sizeof(float);
    int act_bf16 = policy->activations == ACTIVATIONS_BF16, weights_bf16 = policy->weights == WEIGHTS_BF16;
    int grid_embeddings = dqt_store_of(policy, table, PARAM_WTE) == DQT_GRID && policy->weights == WEIGHTS_INT_GRID;
    size_t A = act_bf16 ? 2 : 4;
    MatmulFormat linear = policy->matmul.format, head = policy->lm_head.format, attention = policy->attention.format;
    int fused = fused_attention(policy), materialized = !fused;
    int bf16_attention = attention == MATMUL_BF16;
    size_t attention_operand = format_bytes(attention);

    size_t inp_copy = reads_stored(linear, act_bf16) ? 0 : N * 4 * C * format_bytes(linear);
    size_t head_inp_copy = reads_stored(head, act_bf16) ? 0 : N * C * format_bytes(head);
    size_t weight_copy = reads_stored(linear, weights_bf16) ? 0 : 4 * C * C * format_bytes(linear);
    size_t head_weight_copy = reads_stored(head, weights_bf16) ? 0 : Vp * C * format_bytes(head);
    // The logits' gradient in the LM head's operand type (fp32 or bf16 on this backend): in the logits' place
    // when that is the activations' type. Both hold one chunk of rows.
    size_t R = (size_t)logit_chunk_rows(policy, B, T);
    size_t logit_grad = (head == MATMUL_BF16) == act_bf16 ? 0 : R * Vp * format_bytes(head);
    size_t proj = N * C * A;
    if (policy->grads == GRADS_BF16 && largest_slice_but_wte(table) * F > proj) proj = largest_slice_but_wte(table) * F;
    size_t scratch = layernorm_backward_scratch_floats((int)N, (int)C);
    if (column_sum_scratch_floats((int)N, (int)(4 * C)) > scratch) scratch = column_sum_scratch_floats((int)N, (int)(4 * C));
    // The fused backward's row terms, and after them the column partials of dqkv.
    size_t flash = flash_partials_offset(B, T, (int)NH) + (size_t)flash_partial_rows(B, T) * 3 * C;
    if (fused && flash > scratch) scratch = flash;

    ActivationBuffer buffers[NUM_ACTIVATION_BUFFERS] = {
        {&a->encoded, N * C * A},
        {&a->ln1, L * N * C * A},          {(void **)&a->ln1_mean, L * N * F},  {(void **)&a->ln1_rstd, L * N * F},
        {&a->qkv, L * N * 3 * C * A},      {&a->atty, L * N * C * A},
        {(void **)&a->att, fused ? L * B * NH * T * F : L * TT * F},
        {&a->residual2, L * N * C * A},    {&a->ln2, L * N * C * A},
        {(void **)&a->ln2_mean, L * N * F}, {(void **)&a->ln2_rstd, L * N * F},
        {&a->fch, L * N * 4 * C * A},      {&a->residual3, L * N * C * A},
        {(void **)&a->wte_grad_tail, 0},
        {&a->lnf, N * C * A},              {(void **)&a->lnf_mean, N * F},      {(void **)&a->lnf_rstd, N * F},
        {&a->logits, R * Vp * A},          {&a->logit_grad, logit_grad},
        {(void **)&a->softmax_stats, N * sizeof(SoftmaxStats)},  {(void **)&a->losses, N * F},
        {&a->gelu, N * 4 * C * A},         {&a->proj_out, proj},
        {(void **)&a->dresidual, N * C * F}, {(void **)&a->dln, N * C * F},
        {(void **)&a->dqkv, fused && linear == MATMUL_BF16 ? 0 : N * 3 * C * F},  // else its operand only
        {(void **)&a->datty, N * C * F},
        {(void **)&a->dfch, N * 4 * C * F},       {&a->dfch_operand, linear == MATMUL_BF16 ? N * 4 * C * 2 : 0},
        {&a->q, materialized ? N * C * attention_operand : 0},
        {&a->k, materialized ? N * C * attention_operand : 0},
        {&a->v, materialized ? N * C * attention_operand : 0},
        {(void **)&a->heads, materialized ? N * C * F : 0},
        {(void **)&a->dq, materialized ? N * C * F : 0},
        {(void **)&a->dk, materialized ? N * C * F : 0},
        {(void **)&a->dv, materialized ? N * C * F : 0},
        {&a->heads_cast, materialized && bf16_attention ? N * C * 2 : 0},
        {(void **)&a->scores, materialized ? TT * F : 0},
        {&a->att_cast, materialized && bf16_attention ? TT * 2 : 0},
        {&a->copy_inp, inp_copy > head_inp_copy ? inp_copy : head_inp_copy},
        {&a->copy_weight, weight_copy > head_weight_copy ? weight_copy : head_weight_copy},
        {&a->copy_dout, linear == MATMUL_FP32 ? 0 : N * 4 * C * format_bytes(linear)},
        {(void **)&a->weight_decode, policy->weights == WEIGHTS_INT_GRID ? 4 * C * C * F : 0},
        {(void **)&a->embedding_decode, grid_embeddings ? (Vp + (size_t)s->block_size) * C * F : 0},
        {(void **)&a->scratch, scratch * F},
        {(void **)&a->amax, F},
        {(void **)&a->tokens, N * sizeof(int)},  {(void **)&a->targets, N * sizeof(int)},
    };
    // Under bf16 gradients wte's fp32 gradient is formed at the end of the backward, when the stacked
    // forward buffers from ln1 to residual3, laid out one after another, are dead: it takes their place,
    // and wte_grad_tail, right after them, whatever they lack.
    int first = 0, tail = 0;
    while (buffers[first].buffer != &a->ln1) first++;
    while (buffers[tail].buffer != (void **)&a->wte_grad_tail) tail++;
    size_t stacked = 0;
    for (int i = first; i < tail; i++) stacked += aligned_bytes(buffers[i].bytes);
    // (a multiple of 256 bytes, so the region is exactly aligned_bytes(Vp * C * 4): never larger for a smaller
    // batch, which place_activations lays out in the same allocation)
    size_t dwte = aligned_bytes(Vp * C * F);
    if (policy->grads == GRADS_BF16 && dwte > stacked) buffers[tail].bytes = dwte - stacked;
    memcpy(list, buffers, sizeof buffers);
    return NUM_ACTIVATION_BUFFERS;
}

static size_t activation_total_bytes(const ParamTable *table, const Policy *policy, int B, int T) {
    Activations unused;
    ActivationBuffer list[NUM_ACTIVATION_BUFFERS];
    int count = activation_buffers(&unused, table, policy, B, T, list);
    size_t total = 0;
    for (int i = 0; i < count; i++) total += aligned_bytes(list[i].bytes);
    return total;
}

struct GPTCuda {
    ParamTable table;
    Policy policy;
    int max_B, max_T;
    cudaStream_t stream;
    MatmulContext matmul;
    int allow_tf32;  // products of fp32 values (not of simulated fp8 / eXmY casts) may use TF32
    LinearCasts linear_casts;  // the CPU's casts and fp8 scale rules (its host state: checkpoint staging)
    Fp8ScaleState fp8_state;   // fp8: the scales and amax histories, in device memory (one allocation)
    float *fp8_memory;
    OperandCast attention_cast;  // attention's products and the LM head's (fp32 or bf16 on this backend)
    Activations acts;
    char *act_memory;  // the one device allocation
    size_t act_bytes;  // its bytes, laid out for the largest batch
    EncoderIndex encoder_index;
    int *index_scratch;  // host scratch of encoder_index_build
    GPTWeights weights;  // of the last forward: gpt_cuda_logits_at forms chunked logits again from them
    float *host_rows;    // (max_B, Vp) rows of logits or probabilities at one position, for the host
    float *host_losses;  // (max_B * max_T)
    int B, T, has_targets;
};

// fp8: floats of the device scale state (history, scales, forward amaxes) of `casts`.
static size_t fp8_state_floats(const LinearCasts *casts) {
    const OperandScaling *scaling = &casts->state.scaling;
    return (size_t)casts->count * (2 + (scaling->history ? scaling->history_length : 0));
}

size_t gpt_cuda_activation_bytes(const ParamTable *table, const Policy *policy, int B, int T) {
    size_t N = (size_t)B * T;
    size_t encoder_index = (3 * N + 1) * sizeof(int);  // encoder_index_alloc's arrays
    LinearCasts casts;
    linear_casts_init(&casts, &policy->matmul, table->shape.n_layer);
    size_t fp8_state = fp8_state_floats(&casts) * sizeof(float);
    linear_casts_free(&casts);
    return activation_total_bytes(table, policy, B, T) + MATMUL_WORKSPACE_BYTES + encoder_index + fp8_state;
}

// fp8: the device copy of linear_casts' initial state (scales 1, empty histories).
static void fp8_state_create(GPTCuda *model) {
    const Fp8ScaleState *host = &model->linear_casts.state;
    size_t count = (size_t)model->linear_casts.count, floats = fp8_state_floats(&model->linear_casts);
    if (floats == 0) return;
    model->fp8_memory = (float *)cuda_malloc_checked(floats * sizeof(float), "the fp8 scale state");
    Fp8ScaleState *d = &model->fp8_state;
    *d = *host;
    d->scales = model->fp8_memory;
    d->forward_amax = d->scales + count;
    d->scaling.history = host->scaling.history ? d->forward_amax + count : NULL;
    CUDA_CHECK(cudaMemcpyAsync(d->scales, host->scales, count * sizeof(float), cudaMemcpyHostToDevice, model->stream));
    CUDA_CHECK(cudaMemcpyAsync(d->forward_amax, host->forward_amax, count * sizeof(float), cudaMemcpyHostToDevice,
                               model->stream));
    gpt_cuda_scaling_upload(model);
}

static void place_activations(GPTCuda *model, int B, int T) {
    ActivationBuffer list[NUM_ACTIVATION_BUFFERS];
    int count = activation_buffers(&model->acts, &model->table, &model->policy, B, T, list);
    size_t offset = 0;
    for (int i = 0; i < count; i++) {
        *list[i].buffer = list[i].bytes ? model->act_memory + offset : NULL;
        offset += aligned_bytes(list[i].bytes);
    }
    if (offset > model->act_bytes) fatal("internal: activations of (%d, %d) exceed their allocation", B, T);
    Activations *a = &model->acts;
    a->grad_scratch = model->policy.grads == GRADS_BF16 ? (float *)a->proj_out : NULL;
    if (!a->logit_grad) a->logit_grad = a->logits;
}

GPTCuda *gpt_cuda_create(const ParamTable *table, const Policy *policy, int B, int T, int allow_tf32,
                         cudaStream_t stream) {
    if (B < 1 || T < 1 || T > table->shape.block_size)
        fatal("batch of %d sequences of %d tokens does not fit the model (block_size %d)", B, T,
              table->shape.block_size);
    // This backend casts attention and the LM head alike, to fp32 or bf16.
    MatmulFormat attention_format = policy->attention.format;
    if ((attention_format != MATMUL_FP32 && attention_format != MATMUL_BF16) ||
        policy->lm_head.format != attention_format)
        fatal("--device cuda: precision.attention and precision.lm_head must be the same, fp32 or bf16 (the CPU "
              "backend takes every format for each)");
    GPTCuda *model = (GPTCuda *)xcalloc(1, sizeof *model);
    model->table = *table;
    model->policy = *policy;
    model->max_B = B;
    model->max_T = T;
    model->stream = stream;
    linear_casts_init(&model->linear_casts, &policy->matmul, table->shape.n_layer);
    fp8_state_create(model);
    MatmulPrecision attention = {};
    attention.format = attention_format;
    model->attention_cast = operand_cast_for(&attention);
    matmul_context_init(&model->matmul);
    model->allow_tf32 = allow_tf32;
    model->act_bytes = activation_total_bytes(table, policy, B, T);
    model->act_memory = (char *)cuda_malloc_checked(model->act_bytes, "activations");
    place_activations(model, B, T);
    size_t N = (size_t)B * T, Vp = (size_t)table->shape.padded_vocab;
    encoder_index_alloc(&model->encoder_index, (int)N);
    model->index_scratch = (int *)xmalloc((3 * N + 1 + (size_t)table->shape.vocab_size) * sizeof(int));
    model->host_rows = (float *)xmalloc((size_t)B * Vp * sizeof(float));
    model->host_losses = (float *)xmalloc(N * sizeof(float));
    return model;
}

void gpt_cuda_free(GPTCuda *model) {
    if (!model) return;
    linear_casts_free(&model->linear_casts);
    if (model->fp8_memory) CUDA_CHECK(cudaFree(model->fp8_memory));
    matmul_context_free(&model->matmul);
    CUDA_CHECK(cudaFree(model->act_memory));
    encoder_index_free(&model->encoder_index);
    free(model->index_scratch);
    free(model->host_rows);
    free(model->host_losses);
    free(model);
}

size_t gpt_cuda_scaling_state(GPTCuda *model, float **data) {
    return linear_casts_scaling_state(&model->linear_casts, data);
}

void gpt_cuda_scaling_download(GPTCuda *model) {
    float *host;
    size_t floats = linear_casts_scaling_state(&model->linear_casts, &host);
    if (floats == 0) return;
    CUDA_CHECK(cudaMemcpyAsync(host, model->fp8_state.scaling.history, floats * sizeof(float), cudaMemcpyDeviceToHost,
                               model->stream));
    CUDA_CHECK(cudaStreamSynchronize(model->stream));
}

void gpt_cuda_scaling_upload(GPTCuda *model) {
    float *host;
    size_t floats = linear_casts_scaling_state(&model->linear_casts, &host);
    if (floats == 0) return;
    CUDA_CHECK(cudaMemcpyAsync(model->fp8_state.scaling.history, host, floats * sizeof(float), cudaMemcpyHostToDevice,
                               model->stream));
    CUDA_CHECK(cudaStreamSynchronize(model->stream));
}

// ----------------------------------------------------------------------------------------------------
// matmul operands

static OperandType stored_type(const float *) { return OPERANDS_FP32; }
static OperandType stored_type(const __nv_bfloat16 *) { return OPERANDS_BF16; }

// An operand as a product reads it: fp32 values, or bf16; format says what the values are (fp32 values
// may hold simulated fp8 / eXmY casts, which TF32 would round again).
typedef struct {
    OperandType type;
    MatmulFormat format;
    const void *data;
} Operand;

// A cast, and for fp8 where its scale lives in device memory (NULL: cast.scale).
typedef struct {
    OperandCast cast;
    const float *device_scale;
} DeviceCast;

static DeviceCast host_scaled(const OperandCast *cast) {
    DeviceCast out = {*cast, NULL};
    return out;
}

// x (n, stored fp32 or bf16) as a product in the cast's format reads it: x itself where the format is its
// stored type, else cast into copy (sized for n operands): bf16 operands rounded to nearest-even, fp32
// operands widened, fp8 and eXmY cast values in fp32.
template <typename Stored>
static Operand cast_operand(GPTCuda *model, const DeviceCast *c, void *copy, const Stored *x, size_t n) {
    MatmulFormat format = c->cast.format;
    Operand out = {stored_type(x), format, x};
    if (reads_stored(format, stored_type(x) == OPERANDS_BF16)) return out;
    if (format == MATMUL_BF16) {
        convert_gpu((__nv_bfloat16 *)copy, x, n, model->stream);
        out.type = OPERANDS_BF16;
    } else {
        quantize_operand_gpu((float *)copy, x, n, c->cast, c->device_scale, model->stream);
        out.type = OPERANDS_FP32;
    }
    out.data = copy;
    return out;
}

// The cast of a block linear layer's operand x (n) for this use (linear_casts.h's rules, as on the CPU):
// for fp8, the amax of x and the use's scale are formed on the device, where the cast reads the scale.
template <typename Stored>
static DeviceCast linear_cast(GPTCuda *model, int layer, BlockLinear linear, OperandRole role, int backward,
                              const Stored *x, size_t n) {
    LinearCasts *casts = &model->linear_casts;
    DeviceCast out = {linear_cast_for_role(casts, role), NULL};
    if (out.cast.format != MATMUL_FP8) return out;
    int id = linear_operand_id(layer, linear, role);
    if (linear_cast_needs_amax(casts, role, backward)) {
        tensor_amax_gpu(model->acts.amax, x, n, model->stream);
        fp8_scale_of_use_gpu(&model->fp8_state, id, role == OPERAND_OUTPUT_GRAD, model->acts.amax,
                             out.cast.grid.max_finite, model->stream);
    }
    out.device_scale = model->fp8_state.scales + id;
    return out;
}

// The problem of one product c (M, N) = a (M, K) @ b (K, N), unbatched, beta 0, no bias; c of c_type.
static MatmulProblem problem_of(const GPTCuda *model, Operand a, int trans_a, Operand b, int trans_b, void *c,
                                OperandType c_type, int M, int N, int K) {
    if (a.type != b.type) fatal("internal: a product of fp32 and bf16 operands");
    MatmulProblem p = {};
    p.type = a.type;
    p.allow_tf32 = model->allow_tf32 && a.format == MATMUL_FP32 && b.format == MATMUL_FP32;
    p.trans_a = trans_a;
    p.trans_b = trans_b;
    p.M = M;
    p.N = N;
    p.K = K;
    p.A = a.data;
    p.B = b.data;
    p.C = c;
    p.c_type = c_type;
    p.alpha = 1.0f;
    p.batch = 1;
    return p;
}

// Products of (M, K) @ (K, N) into c (of c_type), batched over `batch` strided operands (attention: B*NH
// heads).
static void batched_product(GPTCuda *model, Operand a, int trans_a, Operand b, int trans_b, void *c,
                            OperandType c_type, int M, int N, int K, int batch, long long stride_a, long long stride_b,
                            long long stride_c, float beta) {
    MatmulProblem p = problem_of(model, a, trans_a, b, trans_b, c, c_type, M, N, K);
    p.beta = beta;
    p.batch = batch;
    p.stride_a = stride_a;
    p.stride_b = stride_b;
    p.stride_c = stride_c;
    matmul_gpu(&model->matmul, &p, model->stream);
}

// One product of (M, K) @ (K, N) into fp32 c (beta: 0 overwrites, 1 adds).
static void product(GPTCuda *model, Operand a, int trans_a, Operand b, int trans_b, float *c, int M, int N, int K,
                    float beta) {
    batched_product(model, a, trans_a, b, trans_b, c, OPERANDS_FP32, M, N, K, 1, 0, 0, 0, beta);
}

// out (M, N, stored as Act) = a @ b^T + bias (N, stored as Param): the fp32 sum rounded once into out. The
// bias scratch (fp32, M x N) is the backward's dfch, dead in the forward.
template <typename Act, typename Param>
static void biased_product(GPTCuda *model, Operand a, Operand b, Act *out, const Param *bias, int M, int N, int K) {
    MatmulProblem p = problem_of(model, a, 0, b, 1, out, stored_type(out), M, N, K);
    p.bias = bias;
    p.bias_type = stored_type(bias);
    p.bias_scratch = model->acts.dfch;
    matmul_gpu(&model->matmul, &p, model->stream);
}

// ----------------------------------------------------------------------------------------------------
// layers

template <typename Act>
struct LayerActivations {
    Act *residual;  // (B, T, C) the layer's input
    Act *ln1, *qkv, *atty, *residual2, *ln2, *fch, *residual3;
    float *ln1_mean, *ln1_rstd, *att, *ln2_mean, *ln2_rstd;
};

template <typename Act>
static LayerActivations<Act> layer_activations(const Activations *a, const ModelShape *s, int l, int B, int T,
                                               int fused) {
    size_t N = (size_t)B * T, C = (size_t)s->n_embd, NH = (size_t)s->n_head;
    size_t att = fused ? N * NH : N * NH * (size_t)T;  // per layer: (B, NH, T) or (B, NH, T, T)
    LayerActivations<Act> x;
    x.residual = l == 0 ? (Act *)a->encoded : (Act *)a->residual3 + (size_t)(l - 1) * N * C;
    x.ln1 = (Act *)a->ln1 + l * N * C;
    x.ln1_mean = a->ln1_mean + l * N;
    x.ln1_rstd = a->ln1_rstd + l * N;
    x.qkv = (Act *)a->qkv + l * N * 3 * C;
    x.atty = (Act *)a->atty + l * N * C;
    x.att = a->att + l * att;
    x.residual2 = (Act *)a->residual2 + l * N * C;
    x.ln2 = (Act *)a->ln2 + l * N * C;
    x.ln2_mean = a->ln2_mean + l * N;
    x.ln2_rstd = a->ln2_rstd + l * N;
    x.fch = (Act *)a->fch + l * N * 4 * C;
    x.residual3 = (Act *)a->residual3 + l * N * C;
    return x;
}

// The tensor that holds parameter offset `at` (the table's tensors lie in order).
static int tensor_at(const ParamTable *table, size_t at) {
    int t = NUM_PARAM_TENSORS - 1;
    while (t > 0 && at < table->tensors[t].offset) t--;
    return t;
}

// The weights from parameter offset `at` on (n of them: a layer slice, a whole 1-D tensor, or wte) in their
// stored type Param: the stored values themselves, or a DQT grid slice decoded (code * its slice's step,
// dqt's int_grid_dequantize) into `scratch` (n floats), one slice at a time. (Under DQT the 1-D tensors are
// fp32, so Param is float wherever a grid exists.)
template <typename Param>
static const Param *weights_at(GPTCuda *model, const GPTWeights *w, size_t at, size_t n, float *scratch) {
    int t = tensor_at(&model->table, at);
    const ParamTensor *tensor = &model->table.tensors[t];
    const TensorWeights *tw = &w->tensors[t];
    size_t index = at - tensor->offset;
    if (tw->store != STORED_GRID) {
        if ((tw->store == STORED_BF16) != (stored_type((const Param *)NULL) == OPERANDS_BF16))
            fatal("internal: tensor %s is not stored in the type the passes read", tensor->name);
        return (const Param *)tw->data + index;
    }
    size_t slice = tensor->numel / (size_t)param_slices(&model->table, t);
    if (stored_type((const Param *)NULL) != OPERANDS_FP32 || n != slice || index % slice != 0 || !scratch)
        fatal("internal: a DQT grid tensor (%s) read other than as one whole slice", tensor->name);
    dqt_decode_gpu(scratch, (const int8_t *)tw->data + index, tw->steps + index / slice, n, model->stream);
    return (const Param *)scratch;
}

// A block linear's weight slice (n elements at parameter offset `at`) as its product reads it, cast for
// this use (linear_casts.h's rules, after the input's cast of the same use, as on the CPU) into copy_weight
// unless the product reads the stored values as they are.
template <typename Param>
static Operand linear_weight(GPTCuda *model, int layer, BlockLinear linear, int backward, const GPTWeights *w,
                             size_t at, size_t n) {
    const Param *values = weights_at<Param>(model, w, at, n, model->acts.weight_decode);
    DeviceCast cast = linear_cast(model, layer, linear, OPERAND_WEIGHT, backward, values, n);
    return cast_operand(model, &cast, model->acts.copy_weight, values, n);
}

// wte (Vp, C) as the LM head's products read it.
template <typename Param>
static Operand head_weight(GPTCuda *model, const GPTWeights *w) {
    const ParamTensor *wte = &model->table.tensors[PARAM_WTE];
    DeviceCast cast = host_scaled(&model->attention_cast);
    if (w->tensors[PARAM_WTE].store == STORED_BF16 && stored_type((const Param *)NULL) != OPERANDS_BF16) {
        const __nv_bfloat16 *bf16_wte = (const __nv_bfloat16 *)w->tensors[PARAM_WTE].data;  // DQT: bf16 embeddings
        return cast_operand(model, &cast, model->acts.copy_weight, bf16_wte, wte->numel);
    }
    const Param *values = weights_at<Param>(model, w, wte->offset, wte->numel, model->acts.embedding_decode);
    return cast_operand(model, &cast, model->acts.copy_weight, values, wte->numel);
}

// encoded (B, T, C) = wte[tokens] + wpe[t], the embeddings read in their store.
template <typename Act, typename Param>
static void encoder_forward(GPTCuda *model, const GPTWeights *w, int B, int T) {
    const ParamTensor *wte = &model->table.tensors[PARAM_WTE], *wpe = &model->table.tensors[PARAM_WPE];
    Activations *a = &model->acts;
    int C = model->table.shape.n_embd;
    if (w->tensors[PARAM_WTE].store == STORED_BF16 && stored_type((const Param *)NULL) != OPERANDS_BF16) {
        encoder_forward_gpu((Act *)a->encoded, a->tokens, (const __nv_bfloat16 *)w->tensors[PARAM_WTE].data,
                            (const __nv_bfloat16 *)w->tensors[PARAM_WPE].data, B, T, C, model->stream);
        return;
    }
    float *decode = a->embedding_decode;  // grid embeddings: wte, then wpe
    const Param *wte_values = weights_at<Param>(model, w, wte->offset, wte->numel, decode);
    const Param *wpe_values = weights_at<Param>(model, w, wpe->offset, wpe->numel, decode ? decode + wte->numel : NULL);
    encoder_forward_gpu((Act *)a->encoded, a->tokens, wte_values, wpe_values, B, T, C, model->stream);
}

// out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias.
template <typename Act, typename Param>
static void linear_forward(GPTCuda *model, int layer, BlockLinear linear, Act *out, const Act *inp,
                           const GPTWeights *w, size_t weight_at, size_t bias_at, int N, int C, int OC) {
    size_t n_inp = (size_t)N * C;
    DeviceCast x_cast = linear_cast(model, layer, linear, OPERAND_INPUT, 0, inp, n_inp);
    Operand weight = linear_weight<Param>(model, layer, linear, 0, w, weight_at, (size_t)OC * C);
    Operand x = cast_operand(model, &x_cast, model->acts.copy_inp, inp, n_inp);
    const Param *bias = weights_at<Param>(model, w, bias_at, (size_t)OC, NULL);
    biased_product(model, x, weight, out, bias, N, OC, C);
}

// ----------------------------------------------------------------------------------------------------
// where the backward puts the parameter gradients

// The fp32 buffer an op adds the gradient of parameters [offset, offset + n) into: the gradients themselves,
// or under bf16 gradients the zeroed scratch (scratch: grad_scratch, or wte's place at the end).
static float *gradient_begin(GPTCuda *model, const GradientTarget *g, float *scratch, size_t offset, size_t n) {
    if (!g->bf16) return g->fp32 + offset;
    CUDA_CHECK(cudaMemsetAsync(scratch, 0, n * sizeof(float), model->stream));
    return scratch;
}

// The slice's gradient of this micro-step is final: under bf16 gradients rounded into its storage, once,
// bf16(stored + gradient), the CPU backend's rule; then the target hears of it.
static void gradient_end(GPTCuda *model, const GradientTarget *g, const float *scratch, size_t offset, size_t n) {
    if (g->bf16) accumulate_bf16_gpu(g->bf16 + offset, scratch, n, model->stream);
    if (g->ready) g->ready(g->context, offset, n);
}

// layernorm_backward_gpu with the weight and bias gradients (C each, at weight and bias) through the
// gradient target: dinp += ..., the parameters' gradients added.
template <typename Act, typename Param>
static void layernorm_backward_into(GPTCuda *model, const GradientTarget *g, float *dinp, size_t weight, size_t bias,
                                    const float *dout, const Act *inp, const GPTWeights *w, const float *mean,
                                    const float *rstd, int N, int C) {
    float *scratch = model->acts.grad_scratch;  // (2C): the weight's, then the bias's
    float *dweight = gradient_begin(model, g, scratch, weight, (size_t)C);
    float *dbias = gradient_begin(model, g, scratch + C, bias, (size_t)C);
    const Param *weight_values = weights_at<Param>(model, w, weight, (size_t)C, NULL);
    layernorm_backward_gpu(dinp, dweight, dbias, dout, inp, weight_values, mean, rstd, N, C, model->acts.scratch,
                           model->stream);
    gradient_end(model, g, dweight, weight, (size_t)C);
    gradient_end(model, g, dbias, bias, (size_t)C);
}

// A block linear's output gradient as its backward reads it: the operand of its two products, and the source
// of its bias gradient (the column sums of the gradient before any cast, as on the CPU): the fp32 gradient,
// or the partials of its column sums (phase 1, in acts.scratch) that the operand's producer already formed.
typedef struct {
    Operand operand;
    const float *fp32;             // (N, OC), or NULL where only the partials exist
    const float *column_partials;  // (partial_rows, OC), or NULL: the column sums of fp32
    int partial_rows;
} OutputGrad;

// dout (N, OC, fp32) as its linear's backward reads it: for bf16 products one pass writes its bf16 operand
// (copy_dout) and its column partials; fp32 products read it as it is; fp8 and eXmY cast it (fp8 with the
// scale of this use, from its amax). Called first in a linear's backward: the CPU's order of fp8 scales.
static OutputGrad output_grad(GPTCuda *model, int layer, BlockLinear linear, const float *dout, int N, int OC) {
    Activations *a = &model->acts;
    OutputGrad out = {{OPERANDS_BF16, MATMUL_BF16, a->copy_dout}, dout, NULL, 0};
    if (model->policy.matmul.format == MATMUL_BF16) {
        cast_column_partials_gpu((__nv_bfloat16 *)a->copy_dout, a->scratch, dout, N, OC, model->stream);
        out.column_partials = a->scratch;
        out.partial_rows = column_sum_row_blocks(N);
        return out;
    }
    size_t n = (size_t)N * OC;
    DeviceCast cast = linear_cast(model, layer, linear, OPERAND_OUTPUT_GRAD, 1, dout, n);
    out.operand = cast_operand(model, &cast, a->copy_dout, dout, n);
    return out;
}

// An output gradient whose producer wrote its bf16 operand and its column partials (bf16 block linears).
static OutputGrad written_output_grad(const void *operand, const float *column_partials, int partial_rows) {
    OutputGrad out = {{OPERANDS_BF16, MATMUL_BF16, operand}, NULL, column_partials, partial_rows};
    return out;
}

// dinp (N, C) = dout @ weight (OC x C at weight_at), overwritten (the CPU zeroes it first).
template <typename Param>
static void linear_backward_input(GPTCuda *model, int layer, BlockLinear linear, float *dinp, const OutputGrad *d,
                                  const GPTWeights *w, size_t weight_at, int N, int C, int OC) {
    Operand weight = linear_weight<Param>(model, layer, linear, 1, w, weight_at, (size_t)OC * C);
    product(model, d->operand, 0, weight, 0, dinp, N, C, OC, 0.0f);
}

// The bias's gradient (OC, at bias_at) += the column sums of dout (before its cast).
static void linear_backward_bias(GPTCuda *model, const GradientTarget *g, size_t bias_at, const OutputGrad *d, int N,
                                 int OC) {
    float *dbias = gradient_begin(model, g, model->acts.grad_scratch, bias_at, (size_t)OC);
    if (d->column_partials)
        column_partials_reduce_gpu(dbias, d->column_partials, d->partial_rows, OC, model->stream);
    else
        column_sums_add_gpu(dbias, d->fp32, N, OC, model->acts.scratch, model->stream);
    gradient_end(model, g, dbias, bias_at, (size_t)OC);
}

// The weight's gradient (OC x C, at weight_at) += dout^T @ inp (N, C), inp cast as the forward cast it.
template <typename Act>
static void linear_backward_weight(GPTCuda *model, const GradientTarget *g, int layer, BlockLinear linear,
                                   size_t weight_at, const OutputGrad *d, const Act *inp, int N, int C, int OC) {
    size_t n_inp = (size_t)N * C, n_weight = (size_t)OC * C;
    DeviceCast x_cast = linear_cast(model, layer, linear, OPERAND_INPUT, 1, inp, n_inp);
    Operand x = cast_operand(model, &x_cast, model->acts.copy_inp, inp, n_inp);
    float *dweight = gradient_begin(model, g, model->acts.grad_scratch, weight_at, n_weight);
    product(model, d->operand, 1, x, 0, dweight, OC, C, N, 1.0f);
    gradient_end(model, g, dweight, weight_at, n_weight);
}

// The whole backward of a block linear (inp (N, C) -> (N, OC)) from its output gradient d: dinp (N, C)
// overwritten, the weight's and the bias's gradients added.
template <typename Act, typename Param>
static void linear_backward(GPTCuda *model, const GradientTarget *g, int layer, BlockLinear linear, float *dinp,
                            size_t weight_at, size_t bias_at, const OutputGrad *d, const Act *inp,
                            const GPTWeights *w, int N, int C, int OC) {
    linear_backward_input<Param>(model, layer, linear, dinp, d, w, weight_at, N, C, OC);
    linear_backward_bias(model, g, bias_at, d, N, OC);
    linear_backward_weight(model, g, layer, linear, weight_at, d, inp, N, C, OC);
}

// ----------------------------------------------------------------------------------------------------
// attention

static OperandType attention_type(const GPTCuda *model) {
    return model->attention_cast.format == MATMUL_BF16 ? OPERANDS_BF16 : OPERANDS_FP32;
}

// The per-head q, k, v of qkv (B, T, 3C), in attention's operand type.
template <typename Act>
static void split_qkv(GPTCuda *model, Operand *q, Operand *k, Operand *v, const Act *qkv, int B, int T, int C,
                      int NH) {
    Activations *a = &model->acts;
    OperandType type = attention_type(model);
    if (type == OPERANDS_BF16)
        attention_split_qkv_gpu((__nv_bfloat16 *)a->q, (__nv_bfloat16 *)a->k, (__nv_bfloat16 *)a->v, qkv, B, T, C, NH,
                                model->stream);
    else
        attention_split_qkv_gpu((float *)a->q, (float *)a->k, (float *)a->v, qkv, B, T, C, NH, model->stream);
    *q = Operand{type, model->attention_cast.format, a->q};
    *k = Operand{type, model->attention_cast.format, a->k};
    *v = Operand{type, model->attention_cast.format, a->v};
}

// An fp32 tensor x (n) as attention's operand: itself, or its bf16 copy in `copy`.
static Operand attention_operand(GPTCuda *model, void *copy, const float *x, size_t n) {
    DeviceCast cast = host_scaled(&model->attention_cast);
    return cast_operand(model, &cast, copy, x, n);
}

// The operand of a (B, NH, T, T) matrix that the softmax kernels wrote: their bf16 copy in att_cast under
// bf16 attention, else the fp32 values themselves.
static Operand square_operand(GPTCuda *model, const float *fp32) {
    if (attention_type(model) == OPERANDS_BF16) return Operand{OPERANDS_BF16, MATMUL_BF16, model->acts.att_cast};
    return Operand{OPERANDS_FP32, MATMUL_FP32, fp32};
}

static __nv_bfloat16 *square_bf16(GPTCuda *model) {
    return attention_type(model) == OPERANDS_BF16 ? (__nv_bfloat16 *)model->acts.att_cast : NULL;
}

// Materialized: atty (B, T, C) and att (B, NH, T, T) from qkv (B, T, 3C): scores = q k^T per head, the
// causal softmax (scale applied there, as the CPU's dot * scale; under bf16 attention it also writes the
// probabilities' bf16 cast), then att v.
template <typename Act>
static void attention_forward_materialized(GPTCuda *model, Act *atty, float *att, const Act *qkv, int B, int T, int C,
                                           int NH) {
    Activations *a = &model->acts;
    int hs = C / NH, batch = B * NH;
    long long head = (long long)T * hs, square = (long long)T * T;
    Operand q, k, v;
    split_qkv(model, &q, &k, &v, qkv, B, T, C, NH);
    batched_product(model, q, 0, k, 1, att, OPERANDS_FP32, T, T, hs, batch, head, head, square, 0.0f);
    attention_softmax_forward_gpu(att, square_bf16(model), att, B, NH, T, 1.0f / sqrtf((float)hs), model->stream);
    Operand probs = square_operand(model, att);
    batched_product(model, probs, 0, v, 0, a->heads, OPERANDS_FP32, T, hs, T, batch, square, head, head, 0.0f);
    attention_merge_heads_gpu(atty, a->heads, B, T, C, NH, model->stream);
}

// Materialized: dqkv (B, T, 3C) = the gradient through attention of datty (B, T, C) (overwritten).
template <typename Act>
static void attention_backward_materialized(GPTCuda *model, float *dqkv, const float *datty, const Act *qkv,
                                            const float *att, int B, int T, int C, int NH) {
    Activations *a = &model->acts;
    int hs = C / NH, batch = B * NH;
    long long head = (long long)T * hs, square = (long long)T * T;
    size_t n_heads = (size_t)batch * head, n_square = (size_t)batch * square;
    Operand q, k, v;
    split_qkv(model, &q, &k, &v, qkv, B, T, C, NH);
    attention_split_heads_gpu(a->heads, datty, B, T, C, NH, model->stream);
    Operand dy = attention_operand(model, a->heads_cast, a->heads, n_heads);
    Operand probs = attention_operand(model, a->att_cast, att, n_square);
    batched_product(model, probs, 1, dy, 0, a->dv, OPERANDS_FP32, T, hs, T, batch, square, head, head, 0.0f);
    batched_product(model, dy, 0, v, 1, a->scores, OPERANDS_FP32, T, T, hs, batch, head, head, square, 0.0f);
    // The score gradients in fp32 in place of datt, or under bf16 attention straight into their bf16 cast
    // (att_cast: its copy of att was read by the dv product above).
    __nv_bfloat16 *dscores_bf16 = square_bf16(model);
    attention_softmax_backward_gpu(dscores_bf16 ? NULL : a->scores, dscores_bf16, a->scores, att, B, NH, T,
                                   1.0f / sqrtf((float)hs), model->stream);
    Operand dscores = square_operand(model, a->scores);
    batched_product(model, dscores, 0, k, 0, a->dq, OPERANDS_FP32, T, hs, T, batch, square, head, head, 0.0f);
    batched_product(model, dscores, 1, q, 0, a->dk, OPERANDS_FP32, T, hs, T, batch, square, head, head, 0.0f);
    CUDA_CHECK(cudaMemsetAsync(dqkv, 0, (size_t)B * T * 3 * C * sizeof(float), model->stream));
    attention_merge_qkv_grad_gpu(dqkv, a->dq, a->dk, a->dv, B, T, C, NH, model->stream);
}

// atty (B, T, C) from qkv (B, T, 3C); att keeps what the backward needs: each row's log-sum-exp (B, NH, T)
// under fused attention, the probabilities (B, NH, T, T) under materialized.
template <typename Act>
static void attention_forward(GPTCuda *model, Act *atty, float *att, const Act *qkv, int B, int T, int C, int NH) {
    if (fused_attention(&model->policy))
        flash_attention_forward_gpu(atty, att, qkv, B, T, C, NH, model->attention_cast, model->stream);
    else
        attention_forward_materialized(model, atty, att, qkv, B, T, C, NH);
}

// The gradient of attention from datty (B, T, C), as the qkv linear's output gradient: under fused attention
// and bf16 block linears the kernels write its bf16 operand and column partials only; otherwise dqkv
// (B, T, 3C) in fp32 (overwritten), which the linear casts.
template <typename Act>
static OutputGrad attention_backward(GPTCuda *model, int layer, const float *datty, const Act *qkv, const Act *atty,
                                     const float *att, int B, int T, int C, int NH) {
    Activations *a = &model->acts;
    int N = B * T;
    if (!fused_attention(&model->policy)) {
        attention_backward_materialized(model, a->dqkv, datty, qkv, att, B, T, C, NH);
        return output_grad(model, layer, LINEAR_QKV, a->dqkv, N, 3 * C);
    }
    int bf16_linears = model->policy.matmul.format == MATMUL_BF16;
    float *partials = a->scratch + flash_partials_offset(B, T, NH);
    FlashGradients grads = {a->dqkv, NULL, NULL};
    if (bf16_linears) grads = FlashGradients{NULL, (__nv_bfloat16 *)a->copy_dout, partials};
    flash_attention_backward_gpu(&grads, datty, qkv, atty, att, a->scratch, B, T, C, NH, model->attention_cast,
                                 model->stream);
    if (bf16_linears) return written_output_grad(a->copy_dout, partials, flash_partial_rows(B, T));
    return output_grad(model, layer, LINEAR_QKV, a->dqkv, N, 3 * C);
}

// ----------------------------------------------------------------------------------------------------
// forward, backward

static void check_tokens(const int *tokens, size_t n, int vocab_size, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= vocab_size)
            fatal("%s token %d at position %zu is outside the vocabulary of %d", what, tokens[i], i, vocab_size);
}

// The operand x (all rows) from row `first` on.
static Operand rows_from(const GPTCuda *model, Operand x, int first) {
    x.data = (const char *)x.data + (size_t)first * model->table.shape.n_embd * type_bytes(x.type);
    return x;
}

// lnf (the first `rows` rows of (B, T, C)) as the LM head's operand.
template <typename Act>
static Operand lnf_operand(GPTCuda *model, int rows) {
    DeviceCast head_cast = host_scaled(&model->attention_cast);
    size_t n = (size_t)rows * model->table.shape.n_embd;
    return cast_operand(model, &head_cast, model->acts.copy_inp, (const Act *)model->acts.lnf, n);
}

// out (rows, Vp, in Act) = the logits of rows [first, first + rows): lnf's operand x of those rows @ wte^T.
template <typename Act>
static void head_logits(GPTCuda *model, Operand x, Operand wte, int first, int rows, void *out) {
    const ModelShape *s = &model->table.shape;
    batched_product(model, rows_from(model, x, first), 0, wte, 1, out, stored_type((const Act *)out), rows, s->padded_vocab, s->n_embd, 1,
                    0, 0, 0, 0.0f);
}

// A layernorm's weight or bias (C at parameter offset `at`), as stored.
template <typename Param>
static const Param *vector_at(GPTCuda *model, const GPTWeights *w, size_t at) {
    return weights_at<Param>(model, w, at, (size_t)model->table.shape.n_embd, NULL);
}

template <typename Act, typename Param>
static void forward_pass(GPTCuda *model, const GPTWeights *w, int B, int T) {
    const ModelShape *s = &model->table.shape;
    int C = s->n_embd, NH = s->n_head, L = s->n_layer, V = s->vocab_size, Vp = s->padded_vocab;
    int N = B * T, fused = fused_attention(&model->policy);
    Activations *a = &model->acts;
    cudaStream_t stream = model->stream;
    const ParamTensor *tensors = model->table.tensors;
    encoder_forward<Act, Param>(model, w, B, T);
    LayerOffsets first = layer_offsets(&model->table, 0);
    LayerActivations<Act> x0 = layer_activations<Act>(a, s, 0, B, T, fused);
    layernorm_forward_gpu(x0.ln1, x0.ln1_mean, x0.ln1_rstd, (const Act *)a->encoded,
                          vector_at<Param>(model, w, first.ln1w), vector_at<Param>(model, w, first.ln1b), N, C, stream);
    Act *proj_out = (Act *)a->proj_out, *gelu = (Act *)a->gelu;
    // Each residual add runs fused with the layernorm that reads its sum: the block's ln2, the next block's
    // ln1, or after the last block lnf.
    for (int l = 0; l < L; l++) {
        LayerOffsets p = layer_offsets(&model->table, l);
        LayerActivations<Act> x = layer_activations<Act>(a, s, l, B, T, fused);
        linear_forward<Act, Param>(model, l, LINEAR_QKV, x.qkv, x.ln1, w, p.qkvw, p.qkvb, N, C, 3 * C);
        attention_forward(model, x.atty, x.att, x.qkv, B, T, C, NH);
        linear_forward<Act, Param>(model, l, LINEAR_ATTPROJ, proj_out, x.atty, w, p.attprojw, p.attprojb, N, C, C);
        residual_layernorm_forward_gpu(x.residual2, x.ln2, x.ln2_mean, x.ln2_rstd, x.residual, proj_out,
                                       vector_at<Param>(model, w, p.ln2w), vector_at<Param>(model, w, p.ln2b), N, C,
                                       stream);
        linear_forward<Act, Param>(model, l, LINEAR_FC, x.fch, x.ln2, w, p.fcw, p.fcb, N, C, 4 * C);
        gelu_forward_gpu(gelu, x.fch, (size_t)N * 4 * C, stream);
        linear_forward<Act, Param>(model, l, LINEAR_FCPROJ, proj_out, gelu, w, p.fcprojw, p.fcprojb, N, 4 * C, C);
        // The sum's layernorm: the next block's ln1, or lnf.
        Act *ln = (Act *)a->lnf;
        float *mean = a->lnf_mean, *rstd = a->lnf_rstd;
        size_t ln_weight = tensors[PARAM_LNFW].offset, ln_bias = tensors[PARAM_LNFB].offset;
        if (l + 1 < L) {
            LayerOffsets next = layer_offsets(&model->table, l + 1);
            LayerActivations<Act> y = layer_activations<Act>(a, s, l + 1, B, T, fused);
            ln = y.ln1;
            mean = y.ln1_mean;
            rstd = y.ln1_rstd;
            ln_weight = next.ln1w;
            ln_bias = next.ln1b;
        }
        residual_layernorm_forward_gpu(x.residual3, ln, mean, rstd, x.residual2, proj_out,
                                       vector_at<Param>(model, w, ln_weight), vector_at<Param>(model, w, ln_bias), N,
                                       C, stream);
    }
    // The LM head is wte itself (tied), all Vp rows; the classifier ignores the padded logits.
    Operand x = lnf_operand<Act>(model, N);
    Operand wte = head_weight<Param>(model, w);
    int R = logit_chunk_rows(&model->policy, B, T);
    for (int first = 0; first < N; first += R) {
        int rows = R < N - first ? R : N - first;
        head_logits<Act>(model, x, wte, first, rows, a->logits);
        classifier_forward_gpu(a->softmax_stats + first, a->losses + first, (const Act *)a->logits,
                               model->has_targets ? a->targets + first : NULL, rows, V, Vp, stream);
    }
}

// The 1-D tensors' store: the type the templates read weights in.
static int bf16_vectors(const GPTWeights *w) { return w->tensors[PARAM_LN1W].store == STORED_BF16; }

float gpt_cuda_forward(GPTCuda *model, const GPTWeights *w, const int *inputs, const int *targets, int B, int T) {
    const ModelShape *s = &model->table.shape;
    if (B < 1 || T < 1 || B > model->max_B || T > model->max_T)
        fatal("batch (%d, %d) exceeds the model's buffers (%d, %d)", B, T, model->max_B, model->max_T);
    int N = B * T, V = s->vocab_size;
    check_tokens(inputs, (size_t)N, V, "input");
    if (targets) check_tokens(targets, (size_t)N, V, "target");
    model->B = B;
    model->T = T;
    model->has_targets = targets != NULL;
    place_activations(model, B, T);
    Activations *a = &model->acts;
    cudaStream_t stream = model->stream;
    // The backward's token index, built first: its host sort waits only for the work already queued.
    if (targets) encoder_index_build(&model->encoder_index, inputs, N, V, model->index_scratch, stream);
    CUDA_CHECK(cudaMemcpyAsync(a->tokens, inputs, (size_t)N * sizeof(int), cudaMemcpyHostToDevice, stream));
    if (targets)
        CUDA_CHECK(cudaMemcpyAsync(a->targets, targets, (size_t)N * sizeof(int), cudaMemcpyHostToDevice, stream));
    model->weights = *w;
    int act_bf16 = model->policy.activations == ACTIVATIONS_BF16;
    if (act_bf16 && bf16_vectors(w)) forward_pass<__nv_bfloat16, __nv_bfloat16>(model, w, B, T);
    else if (act_bf16) forward_pass<__nv_bfloat16, float>(model, w, B, T);
    else if (bf16_vectors(w)) forward_pass<float, __nv_bfloat16>(model, w, B, T);
    else forward_pass<float, float>(model, w, B, T);
    linear_casts_forward_done(&model->linear_casts);
    if (!targets) {
        CUDA_CHECK(cudaStreamSynchronize(stream));
        return 0.0f;
    }
    CUDA_CHECK(cudaMemcpyAsync(model->host_losses, a->losses, (size_t)N * sizeof(float), cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    double sum = 0.0;
    for (int n = 0; n < N; n++) sum += model->host_losses[n];
    return (float)(sum / N);
}

// The logits' gradient as the LM head's operand (fp32 or bf16 on this backend): what the classifier's
// backward wrote into logit_grad.
static Operand logit_grad_operand(GPTCuda *model) {
    return Operand{attention_type(model), model->attention_cast.format, model->acts.logit_grad};
}

// The gradient of dloss * (the losses of rows [first, first + rows)) with respect to their logits, into
// logit_grad as the LM head's operand (in the logits' place where the types agree). again: the logits
// buffer holds another chunk, so this one's logits are formed again first (x, wte: the head's operands).
template <typename Act>
static void logit_gradient(GPTCuda *model, Operand x, Operand wte, int first, int rows, int again, float dloss) {
    const ModelShape *s = &model->table.shape;
    Activations *a = &model->acts;
    if (again) head_logits<Act>(model, x, wte, first, rows, a->logits);
    const Act *logits = (const Act *)a->logits;
    const SoftmaxStats *stats = a->softmax_stats + first;
    const int *targets = a->targets + first;
    if (attention_type(model) == OPERANDS_BF16)
        classifier_backward_gpu((__nv_bfloat16 *)a->logit_grad, logits, stats, targets, dloss, rows, s->vocab_size,
                                s->padded_vocab, model->stream);
    else
        classifier_backward_gpu((float *)a->logit_grad, logits, stats, targets, dloss, rows, s->vocab_size,
                                s->padded_vocab, model->stream);
}

// The LM head's and the embedding's gradients of wte, summed in fp32 in the CPU's order (the head's product,
// then the embedding's rows), and the embedding's of wpe. The head's product runs here, at the end, so that
// under bf16 gradients wte's fp32 gradient can take the place of the forward buffers that are dead by now;
// with the logits in chunks, each chunk's gradient is formed once more for it.
template <typename Act, typename Param>
static void embedding_gradients(GPTCuda *model, const GPTWeights *w, const GradientTarget *g, float dloss) {
    const ModelShape *s = &model->table.shape;
    int B = model->B, T = model->T, C = s->n_embd, Vp = s->padded_vocab, N = B * T;
    const ParamTensor *tensors = model->table.tensors;
    size_t wte = tensors[PARAM_WTE].offset, wpe = tensors[PARAM_WPE].offset;
    size_t n_wte = tensors[PARAM_WTE].numel, n_wpe = tensors[PARAM_WPE].numel;
    Activations *a = &model->acts;
    float *dwte = gradient_begin(model, g, (float *)a->ln1, wte, n_wte);
    Operand x = lnf_operand<Act>(model, N);
    int R = logit_chunk_rows(&model->policy, B, T), chunked = R < N;
    Operand wte_operand = chunked ? head_weight<Param>(model, w) : x;  // (read only when chunked)
    for (int first = 0; first < N; first += R) {
        int rows = R < N - first ? R : N - first;
        if (chunked) logit_gradient<Act>(model, x, wte_operand, first, rows, 1, dloss);
        product(model, logit_grad_operand(model), 1, rows_from(model, x, first), 0, dwte, Vp, C, rows, 1.0f);
    }
    float *dwpe = gradient_begin(model, g, a->grad_scratch, wpe, n_wpe);
    encoder_backward_gpu(dwte, dwpe, a->dresidual, &model->encoder_index, B, T, C, model->stream);
    gradient_end(model, g, dwte, wte, n_wte);
    gradient_end(model, g, dwpe, wpe, n_wpe);
}

// The MLP's backward from dresidual (fcproj's output gradient): fcproj's gradients, GELU's (its output,
// not kept, formed again from fch for fcproj's weight gradient), fc's; dln (N, C) = the gradient of ln2,
// overwritten. Under bf16 block linears one pass over fch recomputes GELU and writes fc's output gradient
// as its bf16 operand with its column partials: no fp32 dfch is stored.
template <typename Act, typename Param>
static void mlp_backward(GPTCuda *model, const GradientTarget *g, int l, const LayerOffsets *p,
                         const LayerActivations<Act> *y, const GPTWeights *w, int N, int C) {
    Activations *a = &model->acts;
    cudaStream_t stream = model->stream;
    Act *gelu = (Act *)a->gelu;
    OutputGrad d = output_grad(model, l, LINEAR_FCPROJ, a->dresidual, N, C);
    linear_backward_input<Param>(model, l, LINEAR_FCPROJ, a->dfch, &d, w, p->fcprojw, N, 4 * C, C);  // GELU's gradient
    linear_backward_bias(model, g, p->fcprojb, &d, N, C);
    int fused = model->policy.matmul.format == MATMUL_BF16;
    if (fused) {
        gelu_backward_fused_gpu(gelu, (__nv_bfloat16 *)a->dfch_operand, a->scratch, a->dfch, y->fch, N, 4 * C, stream);
    } else {
        gelu_forward_gpu(gelu, y->fch, (size_t)N * 4 * C, stream);
        gelu_backward_gpu(a->dfch, a->dfch, y->fch, (size_t)N * 4 * C, stream);
    }
    linear_backward_weight(model, g, l, LINEAR_FCPROJ, p->fcprojw, &d, gelu, N, 4 * C, C);
    // (fcproj's operand in copy_dout is read by now: fc's cast may take its place)
    OutputGrad dfch = fused ? written_output_grad(a->dfch_operand, a->scratch, column_sum_row_blocks(N))
                            : output_grad(model, l, LINEAR_FC, a->dfch, N, 4 * C);
    linear_backward<Act, Param>(model, g, l, LINEAR_FC, a->dln, p->fcw, p->fcb, &dfch, y->ln2, w, N, C, 4 * C);
}

template <typename Act, typename Param>
static void backward_pass(GPTCuda *model, const GPTWeights *w, const GradientTarget *g, float loss_scale) {
    const ModelShape *s = &model->table.shape;
    int B = model->B, T = model->T;
    int C = s->n_embd, NH = s->n_head, L = s->n_layer, Vp = s->padded_vocab;
    int N = B * T, fused = fused_attention(&model->policy);
    const ParamTensor *tensors = model->table.tensors;
    size_t lnfw = tensors[PARAM_LNFW].offset, lnfb = tensors[PARAM_LNFB].offset;
    Activations *a = &model->acts;
    cudaStream_t stream = model->stream;

    // dlnf = dlogits @ wte, chunk by chunk of the logits' rows.
    float dloss = loss_scale / (float)N;
    Operand x = lnf_operand<Act>(model, N);
    Operand wte_operand = head_weight<Param>(model, w);
    int R = logit_chunk_rows(&model->policy, B, T), chunked = R < N;
    for (int first = 0; first < N; first += R) {
        int rows = R < N - first ? R : N - first;
        logit_gradient<Act>(model, x, wte_operand, first, rows, chunked, dloss);
        product(model, logit_grad_operand(model), 0, wte_operand, 0, a->dln + (size_t)first * C, rows, C, Vp, 0.0f);
    }
    LayerActivations<Act> last = layer_activations<Act>(a, s, L - 1, B, T, fused);
    CUDA_CHECK(cudaMemsetAsync(a->dresidual, 0, (size_t)N * C * sizeof(float), stream));
    layernorm_backward_into<Act, Param>(model, g, a->dresidual, lnfw, lnfb, a->dln, last.residual3, w, a->lnf_mean,
                            a->lnf_rstd, N, C);

    for (int l = L - 1; l >= 0; l--) {
        LayerOffsets p = layer_offsets(&model->table, l);
        LayerActivations<Act> y = layer_activations<Act>(a, s, l, B, T, fused);
        // dresidual passes unchanged into both summands of each residual add; each branch adds its input
        // gradient into it (gpt_cpu.c's scheme).
        mlp_backward<Act, Param>(model, g, l, &p, &y, w, N, C);
        layernorm_backward_into<Act, Param>(model, g, a->dresidual, p.ln2w, p.ln2b, a->dln, y.residual2, w, y.ln2_mean,
                                y.ln2_rstd, N, C);
        OutputGrad d = output_grad(model, l, LINEAR_ATTPROJ, a->dresidual, N, C);
        linear_backward<Act, Param>(model, g, l, LINEAR_ATTPROJ, a->datty, p.attprojw, p.attprojb, &d, y.atty, w, N, C,
                                    C);
        OutputGrad dqkv = attention_backward(model, l, a->datty, y.qkv, y.atty, y.att, B, T, C, NH);
        linear_backward<Act, Param>(model, g, l, LINEAR_QKV, a->dln, p.qkvw, p.qkvb, &dqkv, y.ln1, w, N, C, 3 * C);
        layernorm_backward_into<Act, Param>(model, g, a->dresidual, p.ln1w, p.ln1b, a->dln, y.residual, w, y.ln1_mean,
                                y.ln1_rstd, N, C);
    }
    embedding_gradients<Act, Param>(model, w, g, dloss);
}

void gpt_cuda_backward(GPTCuda *model, const GPTWeights *w, const GradientTarget *g, float loss_scale) {
    if (!model->has_targets) fatal("internal: gpt_cuda_backward needs a forward with targets first");
    if (g->bf16 && !model->acts.grad_scratch) fatal("internal: bf16 gradients without a gradient scratch");
    int act_bf16 = model->policy.activations == ACTIVATIONS_BF16;
    if (act_bf16 && bf16_vectors(w)) backward_pass<__nv_bfloat16, __nv_bfloat16>(model, w, g, loss_scale);
    else if (act_bf16) backward_pass<__nv_bfloat16, float>(model, w, g, loss_scale);
    else if (bf16_vectors(w)) backward_pass<float, __nv_bfloat16>(model, w, g, loss_scale);
    else backward_pass<float, float>(model, w, g, loss_scale);
    if (linear_casts_take_forward_record(&model->linear_casts))
        fp8_record_forward_gpu(&model->fp8_state, model->linear_casts.count, model->stream);
}

float *gpt_cuda_gradient_window(GPTCuda *model, size_t *floats) {
    *floats = model->acts.grad_scratch ? largest_slice_but_wte(&model->table) : 0;
    return model->acts.grad_scratch;
}

// Chunked logits (fp32 activations): rows b * T + t of the last forward formed again from lnf and wte into
// the logits buffer's first B rows.
template <typename Param>
static void logits_again(GPTCuda *model, int t) {
    int T = model->T;
    Operand x = lnf_operand<float>(model, model->B * T);
    Operand wte = head_weight<Param>(model, &model->weights);
    size_t row_bytes = (size_t)model->table.shape.padded_vocab * sizeof(float);
    for (int b = 0; b < model->B; b++)
        head_logits<float>(model, x, wte, b * T + t, 1, (char *)model->acts.logits + (size_t)b * row_bytes);
}

// The logits at position t of every sequence of the last forward: (B, Vp) into host_rows, widened to fp32.
static void download_logit_rows(GPTCuda *model, int t) {
    if (t < 0 || t >= model->T) fatal("internal: position %d of a forward of %d positions", t, model->T);
    size_t Vp = (size_t)model->table.shape.padded_vocab, B = (size_t)model->B, T = (size_t)model->T;
    int bf16_logits = model->policy.activations == ACTIVATIONS_BF16;
    size_t elem = bf16_logits ? sizeof(bf16) : sizeof(float), row_bytes = Vp * elem;
    const char *first = (const char *)model->acts.logits + (size_t)t * row_bytes;
    size_t pitch = T * row_bytes;
    if (logit_chunk_rows(&model->policy, model->B, model->T) < model->B * model->T) {
        if (bf16_vectors(&model->weights)) logits_again<__nv_bfloat16>(model, t);
        else logits_again<float>(model, t);
        first = (const char *)model->acts.logits;
        pitch = row_bytes;
    }
    CUDA_CHECK(cudaMemcpy2DAsync(model->host_rows, row_bytes, first, pitch, row_bytes, B, cudaMemcpyDeviceToHost,
                                 model->stream));
    CUDA_CHECK(cudaStreamSynchronize(model->stream));
    if (!bf16_logits) return;
    // The bf16 codes fill the first half of host_rows: widened from the last one back, none is overwritten
    // before it is read.
    const bf16 *codes = (const bf16 *)model->host_rows;
    for (size_t i = B * Vp; i-- > 0;) model->host_rows[i] = bf16_to_f32(codes[i]);
}

const float *gpt_cuda_logits_at(GPTCuda *model, int t) {
    download_logit_rows(model, t);
    return model->host_rows;
}

// The few rows a sampler asks for are softmaxed on the host, by the CPU's classifier, in place.
const float *gpt_cuda_probs_at(GPTCuda *model, int t) {
    const ModelShape *s = &model->table.shape;
    download_logit_rows(model, t);
    classifier_forward(model->host_rows, NULL, model->host_rows, NULL, model->B, s->vocab_size, s->padded_vocab);
    return model->host_rows;
}
