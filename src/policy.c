#include "policy.h"

#include <stdio.h>
#include <string.h>

#include "formats.h"
#include "model.h"
#include "numerics/int_grid.h"
#include "util.h"

// A preset as DESIGN.md's policy table writes it.
typedef struct {
    const char *name;
    WeightStorage weights;
    int grid_bits;
    WeightUpdate update;
    MomentStorage adam_m, adam_v;
    GradStorage grads;
    MatmulFormat matmul;
    MatmulFormat attention;  // also the LM head's
    ActivationStorage activations;
    EmbeddingStorage embeddings;  // DQT and BitNet keep the embeddings in fp32, as BitNet b1.58 does
} Preset;

static const Preset presets[] = {
    {"fp32", WEIGHTS_FP32, 0, UPDATE_EXACT, STATE_FP32, STATE_FP32, GRADS_FP32, MATMUL_FP32, MATMUL_FP32,
     ACTIVATIONS_FP32, EMBEDDINGS_AS_WEIGHTS},
    // The (16,32) baseline: bf16 weights and operands; fp32 master weights, moments and gradients.
    {"mixed", WEIGHTS_BF16, 0, UPDATE_FP32_MASTER, STATE_FP32, STATE_FP32, GRADS_FP32, MATMUL_BF16, MATMUL_BF16,
     ACTIVATIONS_BF16, EMBEDDINGS_AS_WEIGHTS},
    {"mixed_nomaster", WEIGHTS_BF16, 0, UPDATE_BF16_RNE, STATE_FP32, STATE_FP32, GRADS_BF16, MATMUL_BF16, MATMUL_BF16,
     ACTIVATIONS_BF16, EMBEDDINGS_AS_WEIGHTS},
    {"bf16", WEIGHTS_BF16, 0, UPDATE_BF16_RNE, STATE_BF16, STATE_BF16, GRADS_BF16, MATMUL_BF16, MATMUL_BF16,
     ACTIVATIONS_BF16, EMBEDDINGS_AS_WEIGHTS},
    {"collage_light", WEIGHTS_BF16, 0, UPDATE_MCF_GROW, STATE_BF16, STATE_BF16, GRADS_BF16, MATMUL_BF16, MATMUL_BF16,
     ACTIVATIONS_BF16, EMBEDDINGS_AS_WEIGHTS},
    {"collage_plus", WEIGHTS_BF16, 0, UPDATE_MCF_GROW, STATE_BF16, STATE_MCF, GRADS_BF16, MATMUL_BF16, MATMUL_BF16,
     ACTIVATIONS_BF16, EMBEDDINGS_AS_WEIGHTS},
    {"kahan", WEIGHTS_BF16, 0, UPDATE_KAHAN, STATE_BF16, STATE_BF16, GRADS_BF16, MATMUL_BF16, MATMUL_BF16,
     ACTIVATIONS_BF16, EMBEDDINGS_AS_WEIGHTS},
    {"sr", WEIGHTS_BF16, 0, UPDATE_SR, STATE_BF16, STATE_BF16, GRADS_BF16, MATMUL_BF16, MATMUL_BF16,
     ACTIVATIONS_BF16, EMBEDDINGS_AS_WEIGHTS},
    {"fp8_sim", WEIGHTS_BF16, 0, UPDATE_FP32_MASTER, STATE_FP32, STATE_FP32, GRADS_FP32, MATMUL_FP8, MATMUL_BF16,
     ACTIVATIONS_BF16, EMBEDDINGS_AS_WEIGHTS},
    {"dqt_int8", WEIGHTS_INT_GRID, 8, UPDATE_GRID_SR, STATE_FP32, STATE_FP32, GRADS_BF16, MATMUL_BF16, MATMUL_BF16,
     ACTIVATIONS_BF16, EMBEDDINGS_FP32},
    // The DQT code's default width.
    {"dqt_int3", WEIGHTS_INT_GRID, 3, UPDATE_GRID_SR, STATE_FP32, STATE_FP32, GRADS_BF16, MATMUL_BF16, MATMUL_BF16,
     ACTIVATIONS_BF16, EMBEDDINGS_FP32},
    {"dqt_ternary", WEIGHTS_INT_GRID, 0, UPDATE_GRID_SR, STATE_FP32, STATE_FP32, GRADS_BF16, MATMUL_BF16, MATMUL_BF16,
     ACTIVATIONS_BF16, EMBEDDINGS_FP32},
    // BitNet b1.58, DQT's baseline: fp32 latent weights, exact fp32 AdamW, ternary copies in the passes.
    {"bitnet", WEIGHTS_BITNET, 0, UPDATE_EXACT, STATE_FP32, STATE_FP32, GRADS_FP32, MATMUL_BF16, MATMUL_BF16,
     ACTIVATIONS_FP32, EMBEDDINGS_FP32},
};
#define NUM_PRESETS (sizeof presets / sizeof presets[0])

static const char *resolve_alias(const char *name) { return strcmp(name, "fp32_master") == 0 ? "mixed" : name; }

static const Preset *find_preset(const char *name) {
    name = resolve_alias(name);
    for (size_t i = 0; i < NUM_PRESETS; i++) {
        if (strcmp(name, presets[i].name) == 0) return &presets[i];
    }
    char known[512] = "";
    for (size_t i = 0; i < NUM_PRESETS; i++) {
        strncat(known, i ? ", " : "", sizeof known - strlen(known) - 1);
        strncat(known, presets[i].name, sizeof known - strlen(known) - 1);
    }
    fatal("precision.policy: unknown policy \"%s\" (known: %s; alias fp32_master = mixed)", name, known);
}

// The names of each axis's values, as the config writes them (index = enum value).
static const char *const weight_names[] = {"fp32", "bf16", "int", "bitnet"};
static const char *const embedding_names[] = {"grid", "fp32", "bf16"};
static const char *const update_names[] = {"exact", "master", "rne", "mcf", "kahan", "sr", "grid_sr"};
static const char *const moment_names[] = {"fp32", "bf16", "mcf"};
static const char *const grad_names[] = {"fp32", "bf16"};
static const char *const activation_names[] = {"fp32", "bf16"};
static const char *const activation_quant_names[] = {"none", "int8"};
static const char *const attention_impl_names[] = {"fused", "materialized"};

static int index_of(const char *value, const char *const *names, int count) {
    for (int i = 0; i < count; i++) {
        if (strcmp(value, names[i]) == 0) return i;
    }
    return -1;  // config.c admits only listed values; a miss is a new value without its meaning here
}

static int is_preset(const char *value) { return strcmp(value, "preset") == 0; }

static void apply_weights(Policy *p, const char *value) {
    if (is_preset(value)) return;
    if (strncmp(value, "int", 3) == 0) {  // config.c admits int2 .. int8
        p->weights = WEIGHTS_INT_GRID;
        p->grid_bits = value[3] - '0';
    } else if (strcmp(value, "ternary") == 0) {
        p->weights = WEIGHTS_INT_GRID;
        p->grid_bits = 0;
    } else {
        p->weights = (WeightStorage)index_of(value, weight_names, 4);
    }
}

// The embeddings axis applies to quantized weights; elsewhere the embeddings are stored as the weights are.
static void apply_embeddings(Policy *p, const Config *cfg) {
    const char *value = cfg->precision.embeddings;
    int quantized = p->weights == WEIGHTS_INT_GRID || p->weights == WEIGHTS_BITNET;
    if (!quantized) p->embeddings = EMBEDDINGS_AS_WEIGHTS;
    if (is_preset(value)) return;
    if (!quantized) {
        fatal("precision.embeddings = %s applies to grid (dqt) and bitnet weights; this policy's weights are %s "
              "(leave precision.embeddings out)", value, weight_names[p->weights]);
    }
    p->embeddings = (EmbeddingStorage)index_of(value, embedding_names, 3);
    if (p->weights == WEIGHTS_BITNET && p->embeddings == EMBEDDINGS_BF16) {
        fatal("precision.embeddings = bf16 is not a bitnet choice: its latent weights are fp32 (use fp32 or grid)");
    }
}

// Quantized activations pair with quantized weights (BitNet b1.58, DQT); elsewhere they are refused.
static void apply_activation_quant(Policy *p, const Config *cfg) {
    const char *value = cfg->precision.activation_quant;
    p->activation_quant = (ActivationQuant)index_of(value, activation_quant_names, 2);
    if (p->activation_quant == ACTIVATION_QUANT_NONE) return;
    if (p->weights != WEIGHTS_INT_GRID && p->weights != WEIGHTS_BITNET) {
        fatal("precision.activation_quant = %s applies to grid (dqt) and bitnet weights; this policy's weights are %s "
              "(leave precision.activation_quant out)", value, weight_names[p->weights]);
    }
}

// Fused attention takes every attention format but fp8, whose per-row scales come from each query row's
// current amax of probabilities and score gradients: the tiled passes meet a row's values tile by tile.
static void apply_attention_impl(Policy *p, const Config *cfg) {
    p->attention_impl = (AttentionImpl)index_of(cfg->precision.attention_impl, attention_impl_names, 2);
    if (p->attention_impl == ATTENTION_FUSED && p->attention.format == MATMUL_FP8) {
        fatal("precision.attention_impl = fused does not take fp8 attention (precision.attention = fp8 scales each "
              "query row's probabilities and score gradients by the row's current amax, which the tiled passes do "
              "not know in advance): set precision.attention_impl = materialized, or another attention format");
    }
}

static void apply_dqt_rescale(Policy *p, const Config *cfg) {
    p->dqt_rescale = cfg->precision.dqt_rescale;
    if (p->dqt_rescale && p->weights != WEIGHTS_INT_GRID) {
        fatal("precision.dqt_rescale = 1 applies to grid (dqt) weights; this policy's weights are %s",
              weight_names[p->weights]);
    }
}

// One matmul axis (matmul, attention, lm_head) from its config value; the shared settings (rounding, fp8
// scaling) come from their own keys. "preset" keeps the preset's format.
static void apply_matmul(MatmulPrecision *m, const char *key, const char *value, const Config *cfg) {
    const char *rounding = cfg->precision.matmul_rounding;
    m->rounding = strcmp(rounding, "nearest") == 0 ? ROUND_NEAREST_EVEN : ROUND_TOWARD_ZERO;
    m->bf16_first = strcmp(rounding, "bf16_truncate") == 0;
    m->scaling = strcmp(cfg->precision.scaling, "current") == 0 ? SCALING_CURRENT : SCALING_DELAYED;
    m->amax_history = cfg->precision.amax_history;
    m->margin = cfg->precision.margin;
    if (is_preset(value)) return;
    ExmyFormat format;
    if (strcmp(value, "fp32") == 0) {
        m->format = MATMUL_FP32;
    } else if (strcmp(value, "bf16") == 0) {
        m->format = MATMUL_BF16;
    } else if (strcmp(value, "fp8") == 0) {
        m->format = MATMUL_FP8;
    } else if (formats_parse(value, &format)) {
        m->format = MATMUL_EXMY;
        m->exp_bits = format.exp_bits;
        m->man_bits = format.man_bits;
    } else {
        fatal("precision.%s: \"%s\" is not fp32, bf16, fp8 or an eXmY format (1 <= X <= 8, 0 <= Y <= 23)", key, value);
    }
}

// The combinations that make no sense, each refused with the reason.
static void check_combination(const Policy *p) {
    int fp32_weights = p->weights == WEIGHTS_FP32 || p->weights == WEIGHTS_BITNET;
    int grid_weights = p->weights == WEIGHTS_INT_GRID;
    if (fp32_weights != (p->update == UPDATE_EXACT)) {
        fatal("precision: update \"exact\" goes with fp32 (or bitnet's fp32 latent) weights and only with them "
              "(weights %s, update %s)",
              weight_names[p->weights], update_names[p->update]);
    }
    if (grid_weights != (p->update == UPDATE_GRID_SR)) {
        fatal("precision: integer-grid weights (int2 .. int8, ternary) are updated by \"grid_sr\" and only they are "
              "(weights %s, update %s)", weight_names[p->weights], update_names[p->update]);
    }
}

static const char *format_name(MatmulFormat f) {
    return f == MATMUL_FP32 ? "fp32" : f == MATMUL_BF16 ? "bf16" : f == MATMUL_FP8 ? "fp8" : "eXmY";
}

// Whether any of the three matmul axes has format f.
static int any_matmul(const Policy *p, MatmulFormat f) {
    return p->matmul.format == f || p->attention.format == f || p->lm_head.format == f;
}

// A setting that the chosen matmul formats ignore is refused: a run that seems to sweep it would train the
// same model every time. Settings at their default values are not "set". matmul_rounding and margin act on
// every eXmY / fp8 axis; scaling and amax_history only on fp8 block linears (attention and the LM head
// always scale by the current amax: they keep no amax history).
static void check_settings_used(const Policy *p, const Config *cfg) {
    Config defaults;
    config_defaults(&defaults);
    char formats[64];
    snprintf(formats, sizeof formats, "%s, %s, %s", format_name(p->matmul.format), format_name(p->attention.format),
             format_name(p->lm_head.format));
    if (!any_matmul(p, MATMUL_EXMY) &&
        strcmp(cfg->precision.matmul_rounding, defaults.precision.matmul_rounding) != 0) {
        fatal("precision.matmul_rounding = %s has no effect: it applies to eXmY matmuls, and this policy's matmuls "
              "(block linears, attention, LM head) are %s (set one of them to an eXmY format, or leave "
              "matmul_rounding out)", cfg->precision.matmul_rounding, formats);
    }
    int fp8 = p->matmul.format == MATMUL_FP8, delayed = fp8 && p->matmul.scaling == SCALING_DELAYED;
    const char *unused = NULL;
    if (!fp8 && strcmp(cfg->precision.scaling, defaults.precision.scaling) != 0) unused = "scaling";
    else if (!any_matmul(p, MATMUL_FP8) && cfg->precision.margin != defaults.precision.margin) unused = "margin";
    else if (!delayed && cfg->precision.amax_history != defaults.precision.amax_history) unused = "amax_history";
    if (unused) {
        fatal("precision.%s has no effect: it applies to fp8 %s%s, and this policy's matmuls (block linears, "
              "attention, LM head) are %s%s", unused, strcmp(unused, "margin") == 0 ? "matmuls" : "block linears",
              strcmp(unused, "amax_history") == 0 ? " with delayed scaling" : "", formats,
              fp8 ? " with current scaling" : " (set precision.matmul = fp8, or leave it out)");
    }
}

static void describe_overrides(Policy *p, const Config *cfg) {
    const char *axes[] = {cfg->precision.weights, cfg->precision.embeddings, cfg->precision.update,
                          cfg->precision.adam_m,  cfg->precision.adam_v,     cfg->precision.grads,
                          cfg->precision.matmul,  cfg->precision.attention,  cfg->precision.lm_head,
                          cfg->precision.activations};
    int overridden = cfg->precision.dqt_rescale || strcmp(cfg->precision.activation_quant, "none") != 0 ||
                     strcmp(cfg->precision.attention_impl, "fused") != 0;
    for (size_t i = 0; i < sizeof axes / sizeof axes[0]; i++) overridden |= !is_preset(axes[i]);
    if (overridden) strncat(p->name, "+overrides", sizeof p->name - strlen(p->name) - 1);
}

Policy policy_from_config(const Config *cfg) {
    const Preset *preset = find_preset(cfg->precision.policy);
    Policy p;
    memset(&p, 0, sizeof p);
    snprintf(p.name, sizeof p.name, "%s", preset->name);
    p.weights = preset->weights;
    p.grid_bits = preset->grid_bits;
    p.update = preset->update;
    p.adam_m = preset->adam_m;
    p.adam_v = preset->adam_v;
    p.grads = preset->grads;
    p.matmul.format = preset->matmul;
    p.attention.format = preset->attention;
    p.lm_head.format = preset->attention;
    p.activations = preset->activations;
    p.embeddings = preset->embeddings;

    apply_weights(&p, cfg->precision.weights);
    apply_embeddings(&p, cfg);
    apply_dqt_rescale(&p, cfg);
    apply_activation_quant(&p, cfg);
    if (!is_preset(cfg->precision.update)) p.update = (WeightUpdate)index_of(cfg->precision.update, update_names, 7);
    if (!is_preset(cfg->precision.adam_m)) p.adam_m = (MomentStorage)index_of(cfg->precision.adam_m, moment_names, 3);
    if (!is_preset(cfg->precision.adam_v)) p.adam_v = (MomentStorage)index_of(cfg->precision.adam_v, moment_names, 3);
    if (!is_preset(cfg->precision.grads)) p.grads = (GradStorage)index_of(cfg->precision.grads, grad_names, 2);
    if (!is_preset(cfg->precision.activations))
        p.activations = (ActivationStorage)index_of(cfg->precision.activations, activation_names, 2);
    apply_matmul(&p.matmul, "matmul", cfg->precision.matmul, cfg);
    apply_matmul(&p.attention, "attention", cfg->precision.attention, cfg);
    apply_matmul(&p.lm_head, "lm_head", cfg->precision.lm_head, cfg);
    p.attention.scaling = p.lm_head.scaling = SCALING_CURRENT;  // these sites keep no amax history
    apply_attention_impl(&p, cfg);
    p.allow_tf32 = cfg->precision.allow_tf32;
    check_combination(&p);
    check_settings_used(&p, cfg);
    describe_overrides(&p, cfg);
    return p;
}

static size_t weight_bytes(WeightStorage w) {
    return (w == WEIGHTS_FP32 || w == WEIGHTS_BITNET) ? 4 : w == WEIGHTS_BF16 ? 2 : 1;
}
static size_t update_bytes(WeightUpdate u) {
    return u == UPDATE_FP32_MASTER ? 4 : (u == UPDATE_MCF_GROW || u == UPDATE_KAHAN) ? 2 : 0;
}
static size_t moment_bytes(MomentStorage s) { return s == STATE_BF16 ? 2 : 4; }
static size_t grad_bytes(GradStorage g) { return g == GRADS_FP32 ? 4 : 2; }

static size_t bytes_per_param(const Policy *p, size_t weight) {
    return weight + update_bytes(p->update) + moment_bytes(p->adam_m) + moment_bytes(p->adam_v) + grad_bytes(p->grads);
}

size_t policy_bytes_per_param(const Policy *p) { return bytes_per_param(p, weight_bytes(p->weights)); }

// Off the grid, the embeddings carry no grid update state: fp32 or bf16 weights, the same moments and gradients.
size_t policy_embedding_bytes_per_param(const Policy *p) {
    if (p->weights != WEIGHTS_INT_GRID || p->embeddings == EMBEDDINGS_AS_WEIGHTS) return policy_bytes_per_param(p);
    return bytes_per_param(p, p->embeddings == EMBEDDINGS_FP32 ? 4 : 2);
}

int policy_quantizes_tensor(const Policy *p, int tensor, int is_matrix) {
    if (p->weights != WEIGHTS_INT_GRID && p->weights != WEIGHTS_BITNET) return 0;
    int embedding = tensor == PARAM_WTE || tensor == PARAM_WPE;
    return is_matrix && (!embedding || p->embeddings == EMBEDDINGS_AS_WEIGHTS);
}

static const char *weights_text(const Policy *p, char *buf, size_t len) {
    if (p->weights == WEIGHTS_FP32) return "fp32";
    if (p->weights == WEIGHTS_BF16) return "bf16";
    if (p->weights == WEIGHTS_BITNET) {
        return "fp32 latent; passes read absmean-ternary copies of 2-D weights (straight-through gradient)";
    }
    IntGrid g = dqt_grid(p->grid_bits);
    char name[16] = "ternary";
    if (p->grid_bits) snprintf(name, sizeof name, "int%d", p->grid_bits);
    snprintf(buf, len, "%s grid [%d, %d], step mean|W|/%d per weight matrix, %s (1-D fp32)", name, g.min, g.max,
             g.max, p->dqt_rescale ? "recomputed each step" : "fixed at init");
    return buf;
}

static const char *update_text(WeightUpdate u) {
    switch (u) {
    case UPDATE_EXACT: return "exact fp32";
    case UPDATE_FP32_MASTER: return "fp32 master copy, weights = RNE(master)";
    case UPDATE_BF16_RNE: return "bf16 ops, round to nearest";
    case UPDATE_MCF_GROW: return "MCF Grow (Collage), bf16 lo part";
    case UPDATE_KAHAN: return "Kahan-compensated, bf16 compensation buffer";
    case UPDATE_SR: return "stochastic rounding to bf16";
    case UPDATE_GRID_SR: return "fp32 AdamW step, stochastic rounding onto the grid";
    }
    return "?";
}

static const char *moment_text(MomentStorage s) {
    return s == STATE_FP32 ? "fp32" : s == STATE_BF16 ? "bf16" : "bf16 MCF pair (hi, lo)";
}

static const char *matmul_text(const MatmulPrecision *m, char *buf, size_t len) {
    switch (m->format) {
    case MATMUL_FP32: return "fp32";
    case MATMUL_BF16: return "bf16, fp32 accumulate";
    case MATMUL_FP8:
        if (m->scaling == SCALING_DELAYED) {
            snprintf(buf, len, "fp8: E4M3 forward, E5M2 gradients, delayed scaling (history %d, margin %d)",
                     m->amax_history, m->margin);
        } else {
            snprintf(buf, len, "fp8: E4M3 forward, E5M2 gradients, current scaling (margin %d)", m->margin);
        }
        return buf;
    case MATMUL_EXMY:
        snprintf(buf, len, "e%dm%d, round %s, no scaling", m->exp_bits, m->man_bits,
                 m->bf16_first ? "to bf16, then toward zero" : m->rounding == ROUND_TOWARD_ZERO ? "toward zero"
                                                                                               : "to nearest");
        return buf;
    }
    return "?";
}

void policy_print(const Policy *p) {
    char buf[128];
    printf("policy %s\n", p->name);
    printf("  %-18s %s\n", "weights", weights_text(p, buf, sizeof buf));
    if (p->weights == WEIGHTS_INT_GRID || p->weights == WEIGHTS_BITNET) {
        printf("  %-18s %s\n", "embeddings", p->embeddings == EMBEDDINGS_FP32 ? "fp32, exact fp32 update"
                                             : p->embeddings == EMBEDDINGS_BF16 ? "bf16, stochastic rounding"
                                                                                 : "as the 2-D weights");
    }
    printf("  %-18s %s\n", "weight update", update_text(p->update));
    printf("  %-18s %s\n", "adam m", moment_text(p->adam_m));
    printf("  %-18s %s\n", "adam v", moment_text(p->adam_v));
    printf("  %-18s %s\n", "gradients", p->grads == GRADS_FP32 ? "fp32" : "bf16");
    printf("  %-18s %s\n", "linear matmuls", matmul_text(&p->matmul, buf, sizeof buf));
    printf("  %-18s %s\n", "attention", matmul_text(&p->attention, buf, sizeof buf));
    printf("  %-18s %s\n", "attention impl", p->attention_impl == ATTENTION_FUSED
                                                  ? "fused (flash-style; keeps (B, NH, T) log-sum-exps)"
                                                  : "materialized (keeps (B, NH, T, T) probabilities)");
    printf("  %-18s %s\n", "LM head", matmul_text(&p->lm_head, buf, sizeof buf));
    printf("  %-18s %s\n", "activations", p->activations == ACTIVATIONS_BF16 ? "bf16 (stored between ops)" : "fp32");
    if (p->weights == WEIGHTS_INT_GRID || p->weights == WEIGHTS_BITNET) {
        printf("  %-18s %s\n", "activation quant", p->activation_quant == ACTIVATION_QUANT_INT8
                                                       ? "int8 per-token absmax, block linear inputs (straight-through)"
                                                       : "none");
    }
    printf("  %-18s %zu (weights + gradients + optimizer state)", "bytes/param", policy_bytes_per_param(p));
    if (policy_embedding_bytes_per_param(p) != policy_bytes_per_param(p)) {
        printf("; embeddings %zu", policy_embedding_bytes_per_param(p));
    }
    printf("\n");
}
