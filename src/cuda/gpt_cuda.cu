// GPT-2 on one GPU: the layer sequence of src/cpu/gpt_cpu.c (same order, same operand casts, same fp8
// scaling rules) over the kernels of kernels/ and cuBLASLt products.
#include "cuda/gpt_cuda.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/attention.cuh"
#include "kernels/classifier.cuh"
#include "kernels/column_sum.cuh"
#include "kernels/encoder.cuh"
#include "kernels/gelu.cuh"
#include "kernels/gradients.cuh"
#include "kernels/layernorm.cuh"
#include "kernels/matmul.cuh"
#include "kernels/quantize.cuh"

#include "cpu/ops.h"
#include "linear_casts.h"
#include "param_storage.h"

// What the forward keeps for the backward (per-layer buffers stack L slices, as on the CPU), one layer's
// worth of activation gradients, the attention's per-head scratch, the cast copies of matmul operands, and
// under bf16 gradients the fp32 scratch where each tensor slice's gradient is formed before its rounding.
typedef struct {
    float *encoded;    // (B, T, C)
    float *ln1;        // (L, B, T, C)
    float *ln1_mean;   // (L, B, T)
    float *ln1_rstd;   // (L, B, T)
    float *qkv;        // (L, B, T, 3C)
    float *atty;       // (L, B, T, C)
    float *att;        // (L, B, NH, T, T) softmax probabilities
    float *residual2;  // (L, B, T, C)
    float *ln2;        // (L, B, T, C)
    float *ln2_mean;   // (L, B, T)
    float *ln2_rstd;   // (L, B, T)
    float *fch;        // (L, B, T, 4C)
    float *fch_gelu;   // (L, B, T, 4C)
    float *residual3;  // (L, B, T, C)
    float *wte_grad_tail;  // bf16 gradients: what the stacked buffers above lack to hold wte's gradient (below)
    float *lnf;        // (B, T, C)
    float *lnf_mean;   // (B, T)
    float *lnf_rstd;   // (B, T)
    float *logits;     // (B, T, Vp); the backward overwrites them with their gradient
    SoftmaxStats *softmax_stats;  // (B, T) each row's max and 1 / sum of exponentials
    float *losses;     // (B, T)
    float *proj_out;   // (B, T, C) a projection's output before its residual add; dead in the backward
    float *grad_scratch;  // bf16 gradients: proj_out's place (enlarged to hold any tensor slice but wte's)
    float *dresidual;  // (B, T, C)
    float *dln;        // (B, T, C)
    float *dqkv;       // (B, T, 3C)
    float *datty;      // (B, T, C)
    float *dfch_gelu;  // (B, T, 4C)
    float *dfch;       // (B, T, 4C)
    float *q, *k, *v;  // (B, NH, T, hs) each, fp32 or (the first half) bf16
    float *heads;      // (B, NH, T, hs) the attention output per head; in the backward, its gradient
    float *dq, *dk, *dv;  // (B, NH, T, hs)
    float *heads_cast; // (B, NH, T, hs) bf16 copy of the output gradient per head
    float *scores;     // (B, NH, T, T) the backward's probability and score gradients
    float *att_cast;   // (B, NH, T, T) bf16 copy of the probabilities or of the score gradients
    float *copy_inp;   // (B, T, max(4C, C)) cast copy of a matmul input (fp32 values or bf16)
    float *copy_weight;  // (4C or Vp, C) cast copy of a weight, where a product cannot read the stored weights
    float *copy_dout;  // (B, T, max(4C, Vp)) cast copy of an output gradient
    float *scratch;    // column sums and layernorm weight gradients
    float *amax;       // (1) fp8: a tensor's amax
    int *tokens;       // (B, T) inputs
    int *targets;      // (B, T)
} Activations;

#define NUM_ACTIVATION_BUFFERS 46

typedef struct {
    void *buffer;  // float ** or int **
    size_t numel;  // 4-byte elements
} ActivationBuffer;

// 256-byte aligned buffers: cuBLASLt's fastest algorithms want their operands so.
static size_t aligned_numel(size_t numel) { return (numel + 63) / 64 * 64; }

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

// Elements of the weight cast copy: the linear layers' weights (4C x C at most) unless every linear product
// reads the stored bf16 weights (bf16 operands over bf16 weights) or the fp32 weights themselves; wte for
// the LM head likewise.
static size_t weight_copy_numel(const ModelShape *s, const Policy *policy) {
    size_t C = (size_t)s->n_embd, Vp = (size_t)s->padded_vocab;
    int bf16_weights = policy->weights == WEIGHTS_BF16;
    MatmulFormat linear = policy->matmul.format, head = policy->attention.format;
    int linear_copy = linear == MATMUL_FP8 || linear == MATMUL_EXMY || (linear == MATMUL_BF16 && !bf16_weights);
    int head_copy = head == MATMUL_BF16 && !bf16_weights;
    size_t numel = linear_copy ? 4 * C * C : 0;
    return head_copy && Vp * C > numel ? Vp * C : numel;
}

// The one description of the activation buffers that allocation and the memory plan both read.
static int activation_buffers(Activations *a, const ParamTable *table, const Policy *policy, int B, int T,
                              ActivationBuffer list[NUM_ACTIVATION_BUFFERS]) {
    const ModelShape *s = &table->shape;
    size_t L = (size_t)s->n_layer, C = (size_t)s->n_embd, NH = (size_t)s->n_head, Vp = (size_t)s->padded_vocab;
    size_t N = (size_t)B * (size_t)T, TT = (size_t)B * NH * (size_t)T * (size_t)T;
    size_t widest = Vp > 4 * C ? Vp : 4 * C;
    int casts = policy->matmul.format != MATMUL_FP32 || policy->attention.format != MATMUL_FP32;
    int bf16_attention = policy->attention.format == MATMUL_BF16;
    int bf16_grads = policy->grads == GRADS_BF16;
    size_t proj_numel = N * C;
    if (bf16_grads && largest_slice_but_wte(table) > proj_numel) proj_numel = largest_slice_but_wte(table);
    size_t scratch = layernorm_backward_scratch_floats((int)N, (int)C);
    size_t bias_scratch = column_sum_scratch_floats((int)N, (int)widest);
    if (bias_scratch > scratch) scratch = bias_scratch;
    ActivationBuffer buffers[NUM_ACTIVATION_BUFFERS] = {
        {&a->encoded, N * C},         {&a->ln1, L * N * C},         {&a->ln1_mean, L * N},
        {&a->ln1_rstd, L * N},        {&a->qkv, L * N * 3 * C},     {&a->atty, L * N * C},
        {&a->att, L * TT},            {&a->residual2, L * N * C},   {&a->ln2, L * N * C},
        {&a->ln2_mean, L * N},        {&a->ln2_rstd, L * N},        {&a->fch, L * N * 4 * C},
        {&a->fch_gelu, L * N * 4 * C}, {&a->residual3, L * N * C},  {&a->wte_grad_tail, 0},
        {&a->lnf, N * C},
        {&a->lnf_mean, N},            {&a->lnf_rstd, N},            {&a->logits, N * Vp},
        {&a->softmax_stats, 2 * N},   {&a->losses, N},              {&a->proj_out, proj_numel},
        {&a->dresidual, N * C},       {&a->dln, N * C},             {&a->dqkv, N * 3 * C},
        {&a->datty, N * C},           {&a->dfch_gelu, N * 4 * C},   {&a->dfch, N * 4 * C},
        {&a->q, N * C},               {&a->k, N * C},               {&a->v, N * C},
        {&a->heads, N * C},           {&a->dq, N * C},              {&a->dk, N * C},
        {&a->dv, N * C},              {&a->heads_cast, bf16_attention ? N * C : 0},
        {&a->scores, TT},             {&a->att_cast, bf16_attention ? TT : 0},
        {&a->copy_inp, casts ? N * 4 * C : 0}, {&a->copy_weight, weight_copy_numel(s, policy)},
        {&a->copy_dout, casts ? N * widest : 0}, {&a->scratch, scratch},
        {&a->amax, 1},                {&a->tokens, N},              {&a->targets, N},
        {NULL, 0},
    };
    // Under bf16 gradients wte's fp32 gradient is formed at the end of the backward, when the stacked
    // forward buffers from ln1 to residual3, laid out one after another, are dead: it takes their place,
    // and wte_grad_tail, right after them, whatever they lack.
    int first = 0, tail = 0;
    while (buffers[first].buffer != (void *)&a->ln1) first++;
    while (buffers[tail].buffer != (void *)&a->wte_grad_tail) tail++;
    size_t stacked = 0;
    for (int i = first; i < tail; i++) stacked += aligned_numel(buffers[i].numel);
    // (a multiple of 64 elements, so the region is exactly aligned_numel(Vp * C): never larger for a smaller
    // batch, which place_activations lays out in the same allocation)
    if (bf16_grads && aligned_numel(Vp * C) > stacked) buffers[tail].numel = aligned_numel(Vp * C) - stacked;
    memcpy(list, buffers, sizeof buffers);
    return NUM_ACTIVATION_BUFFERS - 1;
}

static size_t activation_numel(const ParamTable *table, const Policy *policy, int B, int T) {
    Activations unused;
    ActivationBuffer list[NUM_ACTIVATION_BUFFERS];
    int count = activation_buffers(&unused, table, policy, B, T, list);
    size_t total = 0;
    for (int i = 0; i < count; i++) total += aligned_numel(list[i].numel);
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
    OperandCast attention_cast;
    Activations acts;
    float *act_memory;  // the one device allocation
    size_t act_numel;   // its floats, laid out for the largest batch
    EncoderIndex encoder_index;
    int *index_scratch;  // host scratch of encoder_index_build
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
    return activation_numel(table, policy, B, T) * sizeof(float) + MATMUL_WORKSPACE_BYTES + encoder_index +
           fp8_state;
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
        *(float **)list[i].buffer = list[i].numel ? model->act_memory + offset : NULL;
        offset += aligned_numel(list[i].numel);
    }
    if (offset > model->act_numel) fatal("internal: activations of (%d, %d) exceed their allocation", B, T);
    model->acts.grad_scratch = model->policy.grads == GRADS_BF16 ? model->acts.proj_out : NULL;
}

GPTCuda *gpt_cuda_create(const ParamTable *table, const Policy *policy, int B, int T, int allow_tf32,
                         cudaStream_t stream) {
    if (B < 1 || T < 1 || T > table->shape.block_size)
        fatal("batch of %d sequences of %d tokens does not fit the model (block_size %d)", B, T,
              table->shape.block_size);
    // This backend casts attention and the LM head alike, to fp32 or bf16, and stores fp32 activations.
    MatmulFormat attention_format = policy->attention.format;
    if ((attention_format != MATMUL_FP32 && attention_format != MATMUL_BF16) ||
        policy->lm_head.format != attention_format)
        fatal("--device cuda: precision.attention and precision.lm_head must be the same, fp32 or bf16 (the CPU "
              "backend takes every format for each)");
    if (policy->activations != ACTIVATIONS_FP32)
        fatal("--device cuda stores activations in fp32 only: set precision.activations=fp32 (bf16 activations "
              "run on --device cpu)");
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
    model->act_numel = activation_numel(table, policy, B, T);
    model->act_memory = (float *)cuda_malloc_checked(model->act_numel * sizeof(float), "activations");
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

// x cast as `c` asks, into copy (sized for n floats) unless no cast is needed: bf16 operands become
// bf16 (the shared nearest-even rounding), fp8 and eXmY cast values in fp32.
static Operand cast_operand(GPTCuda *model, const DeviceCast *c, float *copy, const float *x, size_t n) {
    const OperandCast *cast = &c->cast;
    Operand out = {OPERANDS_FP32, cast->format, x};
    if (cast->format == MATMUL_FP32) return out;
    if (cast->format == MATMUL_BF16) {
        cast_bf16_gpu((__nv_bfloat16 *)copy, x, n, model->stream);
        out.type = OPERANDS_BF16;
    } else {
        quantize_operand_gpu(copy, x, n, *cast, c->device_scale, model->stream);
    }
    out.data = copy;
    return out;
}

// A weight operand: bf16 products read the stored bf16 weights directly when the policy has them.
static Operand weight_operand(GPTCuda *model, const DeviceCast *cast, const GPTWeights *w, size_t offset,
                              size_t n) {
    if (cast->cast.format == MATMUL_BF16 && w->weights_bf16) {
        Operand out = {OPERANDS_BF16, MATMUL_BF16, w->weights_bf16 + offset};
        return out;
    }
    return cast_operand(model, cast, model->acts.copy_weight, w->params + offset, n);
}

// The cast of a block linear layer's operand x (n) for this use (linear_casts.h's rules, as on the CPU):
// for fp8, the amax of x and the use's scale are formed on the device, where the cast reads the scale.
static DeviceCast linear_cast(GPTCuda *model, int layer, BlockLinear linear, OperandRole role, int backward,
                              const float *x, size_t n) {
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

// Products of (M, K) @ (K, N) into c, batched over `batch` strided operands (attention: B*NH heads); bias
// (N) or NULL is added to every row of an unbatched product.
static void batched_product(GPTCuda *model, Operand a, int trans_a, Operand b, int trans_b, float *c, int M, int N,
                            int K, int batch, long long stride_a, long long stride_b, long long stride_c, float beta,
                            const float *bias) {
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
    p.bias = bias;
    p.alpha = 1.0f;
    p.beta = beta;
    p.batch = batch;
    p.stride_a = stride_a;
    p.stride_b = stride_b;
    p.stride_c = stride_c;
    matmul_gpu(&model->matmul, &p, model->stream);
}

// One product of (M, K) @ (K, N) into c (beta: 0 overwrites, 1 adds).
static void product(GPTCuda *model, Operand a, int trans_a, Operand b, int trans_b, float *c, int M, int N, int K,
                    float beta) {
    batched_product(model, a, trans_a, b, trans_b, c, M, N, K, 1, 0, 0, 0, beta, NULL);
}

// ----------------------------------------------------------------------------------------------------
// layers

typedef struct {
    float *residual, *ln1, *ln1_mean, *ln1_rstd, *qkv, *atty, *att, *residual2;
    float *ln2, *ln2_mean, *ln2_rstd, *fch, *fch_gelu, *residual3;
} LayerActivations;

static LayerActivations layer_activations(const Activations *a, const ModelShape *s, int l, int B, int T) {
    size_t N = (size_t)B * T, C = (size_t)s->n_embd, TT = (size_t)B * s->n_head * (size_t)T * T;
    LayerActivations x;
    x.residual = l == 0 ? a->encoded : a->residual3 + (size_t)(l - 1) * N * C;
    x.ln1 = a->ln1 + l * N * C;
    x.ln1_mean = a->ln1_mean + l * N;
    x.ln1_rstd = a->ln1_rstd + l * N;
    x.qkv = a->qkv + l * N * 3 * C;
    x.atty = a->atty + l * N * C;
    x.att = a->att + l * TT;
    x.residual2 = a->residual2 + l * N * C;
    x.ln2 = a->ln2 + l * N * C;
    x.ln2_mean = a->ln2_mean + l * N;
    x.ln2_rstd = a->ln2_rstd + l * N;
    x.fch = a->fch + l * N * 4 * C;
    x.fch_gelu = a->fch_gelu + l * N * 4 * C;
    x.residual3 = a->residual3 + l * N * C;
    return x;
}

// out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias.
static void linear_forward(GPTCuda *model, int layer, BlockLinear linear, float *out, const float *inp, const GPTWeights *w,
                           size_t weight_offset, const float *bias, int N, int C, int OC) {
    size_t n_inp = (size_t)N * C, n_weight = (size_t)OC * C;
    DeviceCast x_cast = linear_cast(model, layer, linear, OPERAND_INPUT, 0, inp, n_inp);
    DeviceCast w_cast = linear_cast(model, layer, linear, OPERAND_WEIGHT, 0, w->params + weight_offset, n_weight);
    Operand x = cast_operand(model, &x_cast, model->acts.copy_inp, inp, n_inp);
    Operand weight = weight_operand(model, &w_cast, w, weight_offset, n_weight);
    batched_product(model, x, 0, weight, 1, out, N, OC, C, 1, 0, 0, 0, 0.0f, bias);
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
static void layernorm_backward_into(GPTCuda *model, const GradientTarget *g, float *dinp, size_t weight, size_t bias,
                                    const float *dout, const float *inp, const float *params, const float *mean,
                                    const float *rstd, int N, int C) {
    float *scratch = model->acts.grad_scratch;  // (2C): the weight's, then the bias's
    float *dweight = gradient_begin(model, g, scratch, weight, (size_t)C);
    float *dbias = gradient_begin(model, g, scratch + C, bias, (size_t)C);
    layernorm_backward_gpu(dinp, dweight, dbias, dout, inp, params + weight, mean, rstd, N, C, model->acts.scratch,
                           model->stream);
    gradient_end(model, g, dweight, weight, (size_t)C);
    gradient_end(model, g, dbias, bias, (size_t)C);
}

// dinp (N, C) = dout @ weight (overwritten: the CPU zeroes it first); the weight's gradient (OC x C, at
// weight_at in the parameter buffer) += dout^T @ inp; the bias's (OC, at bias_at) += the column sums of dout
// before its cast.
static void linear_backward(GPTCuda *model, const GradientTarget *g, int layer, BlockLinear linear, float *dinp,
                            size_t weight_at, size_t bias_at, const float *dout, const float *inp, const GPTWeights *w,
                            int N, int C, int OC) {
    size_t n_inp = (size_t)N * C, n_weight = (size_t)OC * C, n_out = (size_t)N * OC;
    DeviceCast d_cast = linear_cast(model, layer, linear, OPERAND_OUTPUT_GRAD, 1, dout, n_out);
    DeviceCast x_cast = linear_cast(model, layer, linear, OPERAND_INPUT, 1, inp, n_inp);
    DeviceCast w_cast = linear_cast(model, layer, linear, OPERAND_WEIGHT, 1, w->params + weight_at, n_weight);
    Operand d = cast_operand(model, &d_cast, model->acts.copy_dout, dout, n_out);
    Operand x = cast_operand(model, &x_cast, model->acts.copy_inp, inp, n_inp);
    Operand weight = weight_operand(model, &w_cast, w, weight_at, n_weight);
    product(model, d, 0, weight, 0, dinp, N, C, OC, 0.0f);
    float *dweight = gradient_begin(model, g, model->acts.grad_scratch, weight_at, n_weight);
    product(model, d, 1, x, 0, dweight, OC, C, N, 1.0f);
    gradient_end(model, g, dweight, weight_at, n_weight);
    float *dbias = gradient_begin(model, g, model->acts.grad_scratch, bias_at, (size_t)OC);
    column_sums_add_gpu(dbias, dout, N, OC, model->acts.scratch, model->stream);
    gradient_end(model, g, dbias, bias_at, (size_t)OC);
}

// The per-head q, k, v of qkv (B, T, 3C), cast as attention's operands.
static void split_qkv(GPTCuda *model, Operand *q, Operand *k, Operand *v, const float *qkv, int B, int T, int C, int NH) {
    Activations *a = &model->acts;
    OperandType type = model->attention_cast.format == MATMUL_BF16 ? OPERANDS_BF16 : OPERANDS_FP32;
    if (type == OPERANDS_BF16)
        attention_split_qkv_bf16_gpu((__nv_bfloat16 *)a->q, (__nv_bfloat16 *)a->k, (__nv_bfloat16 *)a->v, qkv, B, T, C,
                                     NH, model->stream);
    else
        attention_split_qkv_gpu(a->q, a->k, a->v, qkv, B, T, C, NH, model->stream);
    q->type = k->type = v->type = type;
    q->format = k->format = v->format = model->attention_cast.format;
    q->data = a->q;
    k->data = a->k;
    v->data = a->v;
}

static Operand cast_attention(GPTCuda *model, float *copy, const float *x, size_t n) {
    DeviceCast cast = host_scaled(&model->attention_cast);
    return cast_operand(model, &cast, copy, x, n);
}

// The operand of a (B, NH, T, T) matrix that the softmax kernels wrote: their bf16 copy in att_cast under
// bf16 attention, else the fp32 values themselves.
static Operand square_operand(GPTCuda *model, const float *fp32) {
    Operand out = {OPERANDS_FP32, MATMUL_FP32, fp32};
    if (model->attention_cast.format != MATMUL_BF16) return out;
    out.type = OPERANDS_BF16;
    out.format = MATMUL_BF16;
    out.data = model->acts.att_cast;
    return out;
}

static __nv_bfloat16 *square_bf16(GPTCuda *model) {
    return model->attention_cast.format == MATMUL_BF16 ? (__nv_bfloat16 *)model->acts.att_cast : NULL;
}

// atty (B, T, C) and att (B, NH, T, T) from qkv (B, T, 3C): scores = q k^T per head, the causal softmax
// (scale applied there, as the CPU's dot * scale; under bf16 attention it also writes the probabilities'
// bf16 cast), then att v.
static void attention_forward(GPTCuda *model, float *atty, float *att, const float *qkv, int B, int T, int C, int NH) {
    Activations *a = &model->acts;
    int hs = C / NH, batch = B * NH;
    long long head = (long long)T * hs, square = (long long)T * T;
    Operand q, k, v;
    split_qkv(model, &q, &k, &v, qkv, B, T, C, NH);
    batched_product(model, q, 0, k, 1, att, T, T, hs, batch, head, head, square, 0.0f, NULL);
    attention_softmax_forward_gpu(att, square_bf16(model), att, B, NH, T, 1.0f / sqrtf((float)hs), model->stream);
    Operand probs = square_operand(model, att);
    batched_product(model, probs, 0, v, 0, a->heads, T, hs, T, batch, square, head, head, 0.0f, NULL);
    attention_merge_heads_gpu(atty, a->heads, B, T, C, NH, model->stream);
}

// dqkv (B, T, 3C) += the gradient through attention of datty (B, T, C).
static void attention_backward(GPTCuda *model, float *dqkv, const float *datty, const float *qkv, const float *att,
                               int B, int T, int C, int NH) {
    Activations *a = &model->acts;
    int hs = C / NH, batch = B * NH;
    long long head = (long long)T * hs, square = (long long)T * T;
    size_t n_heads = (size_t)batch * head, n_square = (size_t)batch * square;
    Operand q, k, v;
    split_qkv(model, &q, &k, &v, qkv, B, T, C, NH);
    attention_split_heads_gpu(a->heads, datty, B, T, C, NH, model->stream);
    Operand dy = cast_attention(model, a->heads_cast, a->heads, n_heads);
    Operand probs = cast_attention(model, a->att_cast, att, n_square);
    batched_product(model, probs, 1, dy, 0, a->dv, T, hs, T, batch, square, head, head, 0.0f, NULL);  // dv = att^T dy
    batched_product(model, dy, 0, v, 1, a->scores, T, T, hs, batch, head, head, square, 0.0f, NULL);  // datt = dy v^T
    // The score gradients in fp32 in place of datt, or under bf16 attention straight into their bf16 cast
    // (att_cast: its copy of att was read by the dv product above).
    __nv_bfloat16 *dscores_bf16 = square_bf16(model);
    attention_softmax_backward_gpu(dscores_bf16 ? NULL : a->scores, dscores_bf16, a->scores, att, B, NH, T,
                                   1.0f / sqrtf((float)hs), model->stream);
    Operand dscores = square_operand(model, a->scores);
    batched_product(model, dscores, 0, k, 0, a->dq, T, hs, T, batch, square, head, head, 0.0f, NULL);  // dq = ds k
    batched_product(model, dscores, 1, q, 0, a->dk, T, hs, T, batch, square, head, head, 0.0f, NULL);  // dk = ds^T q
    attention_merge_qkv_grad_gpu(dqkv, a->dq, a->dk, a->dv, B, T, C, NH, model->stream);
}

static void zero(GPTCuda *model, float *x, size_t n) {
    CUDA_CHECK(cudaMemsetAsync(x, 0, n * sizeof(float), model->stream));
}

static void check_tokens(const int *tokens, size_t n, int vocab_size, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= vocab_size)
            fatal("%s token %d at position %zu is outside the vocabulary of %d", what, tokens[i], i, vocab_size);
}

float gpt_cuda_forward(GPTCuda *model, const GPTWeights *w, const int *inputs, const int *targets, int B, int T) {
    const ModelShape *s = &model->table.shape;
    if (B < 1 || T < 1 || B > model->max_B || T > model->max_T)
        fatal("batch (%d, %d) exceeds the model's buffers (%d, %d)", B, T, model->max_B, model->max_T);
    int C = s->n_embd, NH = s->n_head, L = s->n_layer, V = s->vocab_size, Vp = s->padded_vocab;
    int N = B * T;
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

    const ParamTensor *tensors = model->table.tensors;
    const float *params = w->params;
    encoder_forward_gpu(a->encoded, a->tokens, params + tensors[PARAM_WTE].offset, params + tensors[PARAM_WPE].offset,
                        B, T, C, stream);
    LayerOffsets first = layer_offsets(&model->table, 0);
    LayerActivations x0 = layer_activations(a, s, 0, B, T);
    layernorm_forward_gpu(x0.ln1, x0.ln1_mean, x0.ln1_rstd, a->encoded, params + first.ln1w, params + first.ln1b, N, C,
                          stream);
    // Each residual add runs fused with the layernorm that reads its sum: the block's ln2, the next block's
    // ln1, or after the last block lnf.
    for (int l = 0; l < L; l++) {
        LayerOffsets p = layer_offsets(&model->table, l);
        LayerActivations x = layer_activations(a, s, l, B, T);
        linear_forward(model, l, LINEAR_QKV, x.qkv, x.ln1, w, p.qkvw, params + p.qkvb, N, C, 3 * C);
        attention_forward(model, x.atty, x.att, x.qkv, B, T, C, NH);
        linear_forward(model, l, LINEAR_ATTPROJ, a->proj_out, x.atty, w, p.attprojw, params + p.attprojb, N, C, C);
        residual_layernorm_forward_gpu(x.residual2, x.ln2, x.ln2_mean, x.ln2_rstd, x.residual, a->proj_out,
                                       params + p.ln2w, params + p.ln2b, N, C, stream);
        linear_forward(model, l, LINEAR_FC, x.fch, x.ln2, w, p.fcw, params + p.fcb, N, C, 4 * C);
        gelu_forward_gpu(x.fch_gelu, x.fch, (size_t)N * 4 * C, stream);
        linear_forward(model, l, LINEAR_FCPROJ, a->proj_out, x.fch_gelu, w, p.fcprojw, params + p.fcprojb, N, 4 * C, C);
        if (l + 1 < L) {
            LayerOffsets next = layer_offsets(&model->table, l + 1);
            LayerActivations y = layer_activations(a, s, l + 1, B, T);
            residual_layernorm_forward_gpu(x.residual3, y.ln1, y.ln1_mean, y.ln1_rstd, x.residual2, a->proj_out,
                                           params + next.ln1w, params + next.ln1b, N, C, stream);
        } else {
            residual_layernorm_forward_gpu(x.residual3, a->lnf, a->lnf_mean, a->lnf_rstd, x.residual2, a->proj_out,
                                           params + tensors[PARAM_LNFW].offset, params + tensors[PARAM_LNFB].offset,
                                           N, C, stream);
        }
    }
    // The LM head is wte itself (tied), all Vp rows; the classifier ignores the padded logits.
    Operand x = cast_attention(model, a->copy_inp, a->lnf, (size_t)N * C);
    DeviceCast head_cast = host_scaled(&model->attention_cast);
    Operand wte = weight_operand(model, &head_cast, w, tensors[PARAM_WTE].offset, (size_t)Vp * C);
    product(model, x, 0, wte, 1, a->logits, N, Vp, C, 0.0f);
    classifier_forward_gpu(a->softmax_stats, a->losses, a->logits, targets ? a->targets : NULL, N, V, Vp, stream);
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

// The LM head's and the embedding's gradients of wte, summed in fp32 in the CPU's order (the head's product,
// then the embedding's rows), and the embedding's of wpe. The head's product runs here, at the end, so that
// under bf16 gradients wte's fp32 gradient can take the place of the forward buffers that are dead by now.
static void embedding_gradients(GPTCuda *model, const GradientTarget *g) {
    const ModelShape *s = &model->table.shape;
    int B = model->B, T = model->T, C = s->n_embd, Vp = s->padded_vocab, N = B * T;
    const ParamTensor *tensors = model->table.tensors;
    size_t wte = tensors[PARAM_WTE].offset, wpe = tensors[PARAM_WPE].offset;
    size_t n_wte = tensors[PARAM_WTE].numel, n_wpe = tensors[PARAM_WPE].numel;
    Activations *a = &model->acts;
    float *dwte = gradient_begin(model, g, a->ln1, wte, n_wte);
    Operand d = cast_attention(model, a->copy_dout, a->logits, (size_t)N * Vp);  // the logits' gradient
    Operand x = cast_attention(model, a->copy_inp, a->lnf, (size_t)N * C);
    product(model, d, 1, x, 0, dwte, Vp, C, N, 1.0f);  // dwte += dlogits^T @ lnf
    float *dwpe = gradient_begin(model, g, a->grad_scratch, wpe, n_wpe);
    encoder_backward_gpu(dwte, dwpe, a->dresidual, &model->encoder_index, B, T, C, model->stream);
    gradient_end(model, g, dwte, wte, n_wte);
    gradient_end(model, g, dwpe, wpe, n_wpe);
}

void gpt_cuda_backward(GPTCuda *model, const GPTWeights *w, const GradientTarget *g, float loss_scale) {
    if (!model->has_targets) fatal("internal: gpt_cuda_backward needs a forward with targets first");
    if (g->bf16 && !model->acts.grad_scratch) fatal("internal: bf16 gradients without a gradient scratch");
    const ModelShape *s = &model->table.shape;
    int B = model->B, T = model->T;
    int C = s->n_embd, NH = s->n_head, L = s->n_layer, V = s->vocab_size, Vp = s->padded_vocab;
    int N = B * T;
    const ParamTensor *tensors = model->table.tensors;
    size_t wte = tensors[PARAM_WTE].offset, lnfw = tensors[PARAM_LNFW].offset, lnfb = tensors[PARAM_LNFB].offset;
    const float *params = w->params;
    Activations *a = &model->acts;
    cudaStream_t stream = model->stream;

    float *dlogits = a->logits;  // (B, T, Vp), overwritten with the logits' gradient
    classifier_backward_gpu(dlogits, a->softmax_stats, a->targets, loss_scale / (float)N, N, V, Vp, stream);
    Operand d = cast_attention(model, a->copy_dout, dlogits, (size_t)N * Vp);
    DeviceCast head_cast = host_scaled(&model->attention_cast);
    Operand wte_operand = weight_operand(model, &head_cast, w, wte, (size_t)Vp * C);
    product(model, d, 0, wte_operand, 0, a->dln, N, C, Vp, 0.0f);  // dlnf = dlogits @ wte
    LayerActivations last = layer_activations(a, s, L - 1, B, T);
    zero(model, a->dresidual, (size_t)N * C);
    layernorm_backward_into(model, g, a->dresidual, lnfw, lnfb, a->dln, last.residual3, params, a->lnf_mean,
                            a->lnf_rstd, N, C);

    for (int l = L - 1; l >= 0; l--) {
        LayerOffsets p = layer_offsets(&model->table, l);
        LayerActivations y = layer_activations(a, s, l, B, T);
        // dresidual passes unchanged into both summands of each residual add; each branch adds its input
        // gradient into it (gpt_cpu.c's scheme).
        linear_backward(model, g, l, LINEAR_FCPROJ, a->dfch_gelu, p.fcprojw, p.fcprojb, a->dresidual, y.fch_gelu, w, N,
                        4 * C, C);
        zero(model, a->dfch, (size_t)N * 4 * C);
        gelu_backward_gpu(a->dfch, a->dfch_gelu, y.fch, (size_t)N * 4 * C, stream);
        linear_backward(model, g, l, LINEAR_FC, a->dln, p.fcw, p.fcb, a->dfch, y.ln2, w, N, C, 4 * C);
        layernorm_backward_into(model, g, a->dresidual, p.ln2w, p.ln2b, a->dln, y.residual2, params, y.ln2_mean,
                                y.ln2_rstd, N, C);
        linear_backward(model, g, l, LINEAR_ATTPROJ, a->datty, p.attprojw, p.attprojb, a->dresidual, y.atty, w, N, C, C);
        zero(model, a->dqkv, (size_t)N * 3 * C);
        attention_backward(model, a->dqkv, a->datty, y.qkv, y.att, B, T, C, NH);
        linear_backward(model, g, l, LINEAR_QKV, a->dln, p.qkvw, p.qkvb, a->dqkv, y.ln1, w, N, C, 3 * C);
        layernorm_backward_into(model, g, a->dresidual, p.ln1w, p.ln1b, a->dln, y.residual, params, y.ln1_mean,
                                y.ln1_rstd, N, C);
    }
    embedding_gradients(model, g);
    if (linear_casts_take_forward_record(&model->linear_casts))
        fp8_record_forward_gpu(&model->fp8_state, model->linear_casts.count, stream);
}

float *gpt_cuda_gradient_window(GPTCuda *model, size_t *floats) {
    *floats = model->acts.grad_scratch ? largest_slice_but_wte(&model->table) : 0;
    return model->acts.grad_scratch;
}

// The logits at position t of every sequence of the last forward: (B, Vp) into host_rows.
static void download_logit_rows(GPTCuda *model, int t) {
    if (t < 0 || t >= model->T) fatal("internal: position %d of a forward of %d positions", t, model->T);
    size_t row_bytes = (size_t)model->table.shape.padded_vocab * sizeof(float);
    const float *first = model->acts.logits + (size_t)t * model->table.shape.padded_vocab;
    CUDA_CHECK(cudaMemcpy2DAsync(model->host_rows, row_bytes, first, (size_t)model->T * row_bytes, row_bytes,
                                 (size_t)model->B, cudaMemcpyDeviceToHost, model->stream));
    CUDA_CHECK(cudaStreamSynchronize(model->stream));
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
