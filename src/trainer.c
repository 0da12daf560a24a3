#include "trainer.h"

#include <glob.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "atomic_file.h"
#include "backend_choice.h"
#include "checkpoint.h"
#include "cli.h"
#include "config.h"
#include "data.h"
#include "distributed.h"
#include "formats.h"
#include "generate.h"
#include "llmc_model.h"
#include "lr_schedule.h"
#include "run_log.h"
#include "sample.h"
#include "sharpness.h"
#include "tokenizer.h"
#include "util.h"

#define CHECKPOINTS_KEPT 2
#define SAMPLE_RNG_TENSOR 0x5A17u

// Where the loop stands, saved beside the backend's state in every checkpoint.
typedef struct {
    uint64_t step;          // optimizer steps completed
    uint64_t seed;
    uint64_t num_params;
    uint64_t world;         // ranks of the run, and its training.zero: a resume must have the same
    uint64_t zero;
    DataPosition data;
} TrainerState;

typedef struct {
    Config cfg;
    Policy policy;
    ParamTable table;
    int rank, world;         // this process in the data-parallel job (distributed.h)
    const BackendOps *ops;
    Backend *backend;
    DataLoader *train_data;
    DataLoader *val_data;    // NULL when data.val is empty
    Tokenizer *tokenizer;    // NULL when data.tokenizer is empty
    int B, T, accum_steps;
    int *inputs, *targets;   // (B, T)
    TrainerState state;
    RunLog log;
    float best_val_loss, last_val_loss;
    double tokens_per_s_sum;
    int timed_steps;
    UpdateMetrics metrics;   // update-quality sums of a metric step (train_step allocates them on the first)
} Trainer;

// ----------------------------------------------------------------------------------------------------
// configuration

// The run directory and checkpoint file that --resume names (a run directory or a checkpoint file).
typedef struct {
    char run_dir[CONFIG_PATH_MAX];
    char checkpoint[CONFIG_PATH_MAX + 64];
} ResumeTarget;

// Checkpoint files: step_NNNNNNNN.ckpt, the whole state (written by rank 0), and under ZeRO-1 one file per
// other rank, step_NNNNNNNN.rankR.ckpt, with that rank's shard of the optimizer state.
static void checkpoint_path(char *path, size_t len, const char *dir, int step, int rank) {
    if (rank == 0) snprintf(path, len, "%s/checkpoints/step_%08d.ckpt", dir, step);
    else snprintf(path, len, "%s/checkpoints/step_%08d.rank%d.ckpt", dir, step, rank);
}

// The step of a checkpoint file of `rank`, or -1 when path is not one.
static int checkpoint_step_of(const char *path, int rank) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    int step = -1, file_rank = 0, end = -1;
    if (rank == 0) sscanf(base, "step_%d.ckpt%n", &step, &end);
    else sscanf(base, "step_%d.rank%d.ckpt%n", &step, &file_rank, &end);
    return end == (int)strlen(base) && file_rank == rank ? step : -1;
}

static ResumeTarget find_resume_target(const char *arg) {
    ResumeTarget target;
    memset(&target, 0, sizeof target);
    char pattern[CONFIG_PATH_MAX + 64];
    snprintf(pattern, sizeof pattern, "%s/checkpoints/step_*.ckpt", arg);
    glob_t found;
    if (glob(pattern, 0, NULL, &found) == 0) {
        int best = -1;
        for (size_t i = 0; i < found.gl_pathc; i++) {
            int step = checkpoint_step_of(found.gl_pathv[i], 0);
            if (step > best) {
                best = step;
                snprintf(target.checkpoint, sizeof target.checkpoint, "%s", found.gl_pathv[i]);
            }
        }
        globfree(&found);
        snprintf(target.run_dir, sizeof target.run_dir, "%s", arg);
        return target;
    }
    if (checkpoint_step_of(arg, 0) < 0 || !file_exists(arg)) {
        fatal("--resume %s: not a run directory with checkpoints/step_*.ckpt, nor a checkpoint file", arg);
    }
    // A checkpoint file: its run directory is two levels up (RUN/checkpoints/step_N.ckpt).
    snprintf(target.checkpoint, sizeof target.checkpoint, "%s", arg);
    snprintf(target.run_dir, sizeof target.run_dir, "%s", arg);
    for (int up = 0; up < 2; up++) {
        char *slash = strrchr(target.run_dir, '/');
        if (slash) *slash = '\0';
        else snprintf(target.run_dir, sizeof target.run_dir, ".");
    }
    return target;
}

static void load_config(Trainer *tr, const CliOptions *opt, const ResumeTarget *resume) {
    Config *cfg = &tr->cfg;
    config_defaults(cfg);
    if (opt->config) {
        config_load(cfg, opt->config, NULL);
    } else if (resume) {
        char path[CONFIG_PATH_MAX + 16];
        snprintf(path, sizeof path, "%s/config.json", resume->run_dir);
        config_load(cfg, path, NULL);
    } else {
        fatal("no config given: use --config FILE (for example --config tiny_cpu.json), or --resume DIR");
    }
    for (int i = 0; i < opt->num_sets; i++) config_set(cfg, opt->sets[i]);
    if (resume) snprintf(cfg->output.dir, sizeof cfg->output.dir, "%s", resume->run_dir);
    // A model file to start from fixes the model's shape.
    if (cfg->model.init_from[0]) {
        ModelShape shape = llmc_model_read_shape(cfg->model.init_from);
        cfg->model.n_layer = shape.n_layer;
        cfg->model.n_head = shape.n_head;
        cfg->model.n_embd = shape.n_embd;
        cfg->model.block_size = shape.block_size;
        cfg->model.vocab_size = shape.vocab_size;
    }
    config_validate(cfg);
    tr->policy = policy_from_config(cfg);

    ModelShape shape = {cfg->model.n_layer, cfg->model.n_head, cfg->model.n_embd, cfg->model.block_size,
                        cfg->model.vocab_size, padded_vocab_size(cfg->model.vocab_size)};
    param_table_init(&tr->table, &shape);
    tr->B = cfg->training.batch_size;
    tr->T = cfg->training.seq_len;
    // tokens_per_step counts the tokens of all ranks together.
    long step_tokens = (long)tr->B * tr->T * tr->world;
    if (cfg->training.tokens_per_step % step_tokens != 0) {
        fatal("training.tokens_per_step (%ld) must be 0 or a multiple of training.batch_size * training.seq_len * "
              "ranks (%d * %d * %d = %ld)", cfg->training.tokens_per_step, tr->B, tr->T, tr->world, step_tokens);
    }
    tr->accum_steps = cfg->training.tokens_per_step ? (int)(cfg->training.tokens_per_step / step_tokens) : 1;
}

// Every rank must train the same model on the same data with the same settings: each compares a hash of
// its resolved config with every other rank's.
static void check_same_config(const Trainer *tr) {
    if (tr->world == 1) return;
    char *json = config_to_json(&tr->cfg);
    uint64_t hash = 14695981039346656037ull;  // FNV-1a: a few kilobytes, once
    for (const char *c = json; *c; c++) hash = (hash ^ (unsigned char)*c) * 1099511628211ull;
    free(json);
    uint64_t *hashes = xcalloc((size_t)tr->world, sizeof(uint64_t));
    size_t *bounds = xmalloc((size_t)(tr->world + 1) * sizeof(size_t));
    for (int r = 0; r <= tr->world; r++) bounds[r] = (size_t)r;
    hashes[tr->rank] = hash;
    dist_all_gather(hashes, sizeof(uint64_t), bounds);
    if (hashes[tr->rank] != hashes[0]) {
        fatal("rank %d's configuration differs from rank 0's: every rank must run with the same config and --set "
              "options", tr->rank);
    }
    free(hashes);
    free(bounds);
}

// ----------------------------------------------------------------------------------------------------
// dry run

static void print_memory_plan(const Trainer *tr) {
    const double MiB = 1024.0 * 1024.0;
    int shards = tr->cfg.training.zero ? tr->world : 1;
    size_t state = tr->ops->plan_state_bytes(&tr->table, &tr->policy, shards);
    size_t acts = tr->ops->plan_activation_bytes(&tr->table, &tr->policy, tr->B, tr->T);
    printf("memory plan (%s backend, micro-batch %d x %d, %d accumulation step%s):\n", tr->ops->name, tr->B, tr->T,
           tr->accum_steps, tr->accum_steps == 1 ? "" : "s");
    printf("  weights + gradients + optimizer state  %10.1f MiB  (%zu params x %zu bytes/param by policy",
           state / MiB, tr->table.num_params, policy_bytes_per_param(&tr->policy));
    if (state != tr->table.num_params * policy_bytes_per_param(&tr->policy)) {
        printf("; the %s backend adds the fp32 copy of the weights that its forward reads%s", tr->ops->name,
               tr->ops == &cpu_backend && tr->policy.grads == GRADS_BF16 ? ", and an fp32 gradient scratch" : "");
    }
    if (shards > 1) printf("; per rank, the optimizer state sharded over %d ranks by ZeRO-1", shards);
    printf(")\n");
    printf("  activations                            %10.1f MiB\n", acts / MiB);
    printf("  total                                  %10.1f MiB\n", (state + acts) / MiB);
}

// The measured device memory beside the plan that --dry-run prints.
static void print_device_memory(const Trainer *tr) {
    const double MiB = 1024.0 * 1024.0;
    int shards = tr->cfg.training.zero ? tr->world : 1;
    size_t plan = tr->ops->plan_state_bytes(&tr->table, &tr->policy, shards) +
                  tr->ops->plan_activation_bytes(&tr->table, &tr->policy, tr->B, tr->T);
    size_t measured = tr->ops->device_memory_bytes(tr->backend);
    printf("device memory on %s: peak %.1f MiB measured, %.1f MiB planned (%+.1f%%)\n",
           tr->ops->device_name(tr->backend), measured / MiB, plan / MiB, 100.0 * ((double)measured - plan) / plan);
}

static void dry_run(const Trainer *tr) {
    const ModelShape *s = &tr->table.shape;
    printf("model: GPT-2, %d layers, %d heads, n_embd %d, block_size %d, vocab %d (padded %d)\n", s->n_layer,
           s->n_head, s->n_embd, s->block_size, s->vocab_size, s->padded_vocab);
    param_table_print(&tr->table);
    policy_print(&tr->policy);
    print_memory_plan(tr);
}

// ----------------------------------------------------------------------------------------------------
// checkpoints

static int checkpoint_sections(Trainer *tr, CheckpointSection *sections) {
    BackendState *bs = tr->ops->state_save(tr->backend);
    sections[0] = (CheckpointSection){"trainer", &tr->state, sizeof tr->state};
    for (int i = 0; i < bs->count; i++) sections[1 + i] = bs->sections[i];
    return 1 + bs->count;
}

static void remove_old_checkpoints(const char *dir, int newest_step, int rank) {
    char pattern[CONFIG_PATH_MAX + 64];
    snprintf(pattern, sizeof pattern, "%s/checkpoints/step_*.ckpt", dir);
    glob_t found;
    if (glob(pattern, 0, NULL, &found) != 0) return;
    int kept = 0;
    for (size_t i = found.gl_pathc; i-- > 0;) {  // sorted by name, zero-padded: newest last
        int step = checkpoint_step_of(found.gl_pathv[i], rank);
        if (step < 0 || step > newest_step) continue;
        if (++kept > CHECKPOINTS_KEPT) unlink(found.gl_pathv[i]);
    }
    globfree(&found);
}

// Rank 0 writes the state every rank shares; under ZeRO-1 each other rank writes its own file beside it,
// whose optimizer state is its shard (the rest repeats rank 0's).
static void save_checkpoint(Trainer *tr) {
    if (tr->rank != 0 && !tr->cfg.training.zero) return;
    char path[CONFIG_PATH_MAX + 64];
    checkpoint_path(path, sizeof path, tr->cfg.output.dir, (int)tr->state.step, tr->rank);
    tr->state.data = dataloader_position(tr->train_data);
    CheckpointSection sections[16];
    int count = checkpoint_sections(tr, sections);
    checkpoint_write(path, sections, count);
    remove_old_checkpoints(tr->cfg.output.dir, (int)tr->state.step, tr->rank);
}

// The ranks and sharding of a run must match its checkpoint's: rank 0's file says what they were.
static void check_checkpoint_ranks(const Trainer *tr, const char *path) {
    TrainerState saved;
    checkpoint_read_one(path, &(CheckpointSection){"trainer", &saved, sizeof saved});
    if (saved.world != (uint64_t)tr->world || saved.zero != (uint64_t)tr->cfg.training.zero) {
        fatal("%s: checkpoint was written by a run on %llu rank(s) with training.zero = %llu; this run has %d "
              "rank(s) with training.zero = %d: resume on the same number of ranks, with the same training.zero",
              path, (unsigned long long)saved.world, (unsigned long long)saved.zero, tr->world, tr->cfg.training.zero);
    }
}

static void load_checkpoint(Trainer *tr, const char *root_path) {
    check_checkpoint_ranks(tr, root_path);
    // Under ZeRO-1 rank r > 0 reads its own file: step_N.ckpt -> step_N.rankR.ckpt.
    char path[CONFIG_PATH_MAX + 80];
    snprintf(path, sizeof path, "%s", root_path);
    if (tr->cfg.training.zero && tr->rank != 0) {
        int stem = (int)(strlen(root_path) - strlen(".ckpt"));
        snprintf(path, sizeof path, "%.*s.rank%d.ckpt", stem, root_path, tr->rank);
    }
    CheckpointSection sections[16];
    int count = checkpoint_sections(tr, sections);
    checkpoint_read(path, sections, count);
    if (tr->state.seed != tr->cfg.training.seed || tr->state.num_params != tr->table.num_params) {
        fatal("%s: checkpoint was written by a run with seed %llu and %llu parameters; this config has seed %llu "
              "and %zu parameters", path, (unsigned long long)tr->state.seed,
              (unsigned long long)tr->state.num_params, (unsigned long long)tr->cfg.training.seed,
              tr->table.num_params);
    }
    if ((int)tr->state.step > tr->cfg.training.max_steps) {
        fatal("%s: checkpoint is at step %d, beyond training.max_steps = %d", path, (int)tr->state.step,
              tr->cfg.training.max_steps);
    }
    tr->ops->state_load(tr->backend);
    dataloader_seek(tr->train_data, tr->state.data);
}

// ----------------------------------------------------------------------------------------------------
// set-up

static void open_data(Trainer *tr) {
    const Config *cfg = &tr->cfg;
    // Each rank reads its own B rows of every batch of world * B rows.
    tr->train_data = dataloader_open(cfg->data.train, tr->B, tr->T, tr->rank, tr->world, cfg->model.vocab_size,
                                     cfg->training.seed, cfg->data.shuffle);
    if (cfg->data.val[0] && cfg->training.eval_every > 0) {
        tr->val_data = dataloader_open(cfg->data.val, tr->B, tr->T, tr->rank, tr->world, cfg->model.vocab_size, 0, 0);
    }
    if (cfg->data.tokenizer[0]) tr->tokenizer = tokenizer_load(cfg->data.tokenizer);
    tr->inputs = xmalloc((size_t)tr->B * tr->T * sizeof(int));
    tr->targets = xmalloc((size_t)tr->B * tr->T * sizeof(int));
}

static void create_backend(Trainer *tr) {
    float *params = xmalloc(tr->table.num_params * sizeof(float));
    if (tr->cfg.model.init_from[0]) llmc_model_load(tr->cfg.model.init_from, &tr->table, params);
    else gpt_init_params(&tr->table, params, tr->cfg.training.seed);
    tr->backend = tr->ops->create(&tr->table, &tr->policy, tr->B, tr->T, params);
    free(params);
    if (tr->cfg.training.zero) tr->ops->shard_optimizer_state(tr->backend);
    tr->state.seed = tr->cfg.training.seed;
    tr->state.num_params = tr->table.num_params;
    tr->state.world = (uint64_t)tr->world;
    tr->state.zero = (uint64_t)tr->cfg.training.zero;
}

// Only now, with config, data, model and checkpoint all checked, does the run touch its output directory.
// Rank 0 writes the outputs; under ZeRO-1 every rank writes checkpoints.
static void open_output(Trainer *tr) {
    char path[CONFIG_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/checkpoints", tr->cfg.output.dir);
    make_dirs(path);
    if (tr->rank != 0) return;
    snprintf(path, sizeof path, "%s/config.json", tr->cfg.output.dir);
    char *json = config_to_json(&tr->cfg);
    atomic_file_write_text(path, "config", json);
    free(json);
    run_log_open(&tr->log, tr->cfg.output.dir, tr->cfg.training.max_steps, (int)tr->state.step);
}

// ----------------------------------------------------------------------------------------------------
// the loop

// Mean logit sharpness over the last position of each sequence of the last forward.
static double batch_sharpness(Trainer *tr) {
    const ModelShape *shape = &tr->table.shape;
    const float *logits = tr->ops->logits(tr->backend, tr->T - 1);  // (B, Vp)
    double sum = 0.0;
    for (int b = 0; b < tr->B; b++) {
        size_t last = (size_t)b * tr->T + tr->T - 1;
        sum += logit_sharpness(logits + (size_t)b * shape->padded_vocab, shape->vocab_size, tr->targets[last],
                               tr->cfg.metrics.sharpness, tr->cfg.metrics.sharpness_steps);
    }
    return sum / tr->B;
}

// Validation loss over eval_batches batches; and, when metrics.sharpness is set, the logit sharpness. Each
// rank evaluates its rows of each batch; the means are over all ranks.
static void evaluate(Trainer *tr, StepRecord *rec) {
    dataloader_reset(tr->val_data);
    double loss_sum = 0.0, sharpness_sum = 0.0;
    for (int i = 0; i < tr->cfg.training.eval_batches; i++) {
        dataloader_next(tr->val_data, tr->inputs, tr->targets);
        loss_sum += tr->ops->forward(tr->backend, tr->inputs, tr->targets, tr->B, tr->T);
        if (tr->cfg.metrics.sharpness > 0.0f) sharpness_sum += batch_sharpness(tr);
    }
    double sums[2] = {loss_sum, sharpness_sum};
    dist_all_reduce_sum_doubles(sums, 2);
    double batches = (double)tr->cfg.training.eval_batches * tr->world;
    rec->has_val = 1;
    rec->val_loss = (float)(sums[0] / batches);
    rec->has_sharpness = tr->cfg.metrics.sharpness > 0.0f;
    rec->sharpness = (float)(sums[1] / batches);
}

// training.eval_at_start: the untrained model's validation loss, logged as step 0 (a resume skips it).
static void evaluate_at_start(Trainer *tr) {
    StepRecord rec;
    memset(&rec, 0, sizeof rec);
    evaluate(tr, &rec);
    if (tr->rank == 0) run_log_eval(&tr->log, &rec);
}

static void write_sample(Trainer *tr, int step) {
    RngKey key = {tr->cfg.training.seed, (uint64_t)step, SAMPLE_RNG_TENSOR};
    char *text = sample_text(tr->ops, tr->backend, tr->tokenizer, tr->table.shape.vocab_size, tr->T,
                             tr->cfg.training.sample_tokens, key);
    run_log_sample(&tr->log, step, text);
    free(text);
}

static int every(int period, int step) { return period > 0 && step % period == 0; }

static AdamWStep adamw_hyperparameters(const Trainer *tr, int step, float grad_norm) {
    const Config *cfg = &tr->cfg;
    float clip = cfg->training.grad_clip;
    AdamWStep s;
    s.lr = lr_at_step(cfg, step);
    s.beta1 = cfg->training.beta1;
    s.beta2 = cfg->training.beta2;
    s.eps = cfg->training.eps;
    s.weight_decay = cfg->training.weight_decay;
    s.bias_correction1 = 1.0f - powf(cfg->training.beta1, (float)(step + 1));
    s.bias_correction2 = 1.0f - powf(cfg->training.beta2, (float)(step + 1));
    s.grad_scale = clip > 0.0f && grad_norm > clip ? clip / grad_norm : 1.0f;
    s.seed = cfg->training.seed;
    s.step = (uint64_t)step;
    return s;
}

static StepRecord train_step(Trainer *tr) {
    int step = (int)tr->state.step;
    double start = wall_time_seconds();
    tr->ops->zero_grad(tr->backend);
    double loss_sum = 0.0;
    // Each rank's gradient is scaled by 1/world, so that the sum over ranks is the mean.
    float loss_scale = 1.0f / (float)(tr->accum_steps * tr->world);
    for (int micro = 0; micro < tr->accum_steps; micro++) {
        dataloader_next(tr->train_data, tr->inputs, tr->targets);
        loss_sum += tr->ops->forward(tr->backend, tr->inputs, tr->targets, tr->B, tr->T);
        tr->ops->backward(tr->backend, loss_scale, micro == tr->accum_steps - 1);
    }
    tr->ops->reduce_gradients(tr->backend);
    dist_all_reduce_sum_doubles(&loss_sum, 1);
    float loss = (float)(loss_sum / (tr->accum_steps * tr->world));
    float grad_norm = tr->ops->grad_norm(tr->backend);
    if (!isfinite(loss) || !isfinite(grad_norm)) {
        fatal("step %d: the loss (%g) or gradient norm (%g) is not finite; the run has diverged (its last "
              "complete checkpoint, if any, is in %s/checkpoints)", step + 1, loss, grad_norm, tr->cfg.output.dir);
    }
    AdamWStep hp = adamw_hyperparameters(tr, step, grad_norm);
    int with_metrics = every(tr->cfg.metrics.every, step + 1);
    if (with_metrics && !tr->metrics.groups) update_metrics_init(&tr->metrics, &tr->table);
    tr->ops->optimizer_step(tr->backend, &hp, with_metrics ? &tr->metrics : NULL);
    tr->state.step++;
    double seconds = wall_time_seconds() - start;

    StepRecord rec;
    memset(&rec, 0, sizeof rec);
    rec.step = (int)tr->state.step;
    rec.loss = loss;
    rec.lr = hp.lr;
    rec.grad_norm = grad_norm;
    rec.ms = 1000.0 * seconds;
    rec.tokens_per_s = (double)tr->accum_steps * tr->B * tr->T * tr->world / seconds;
    rec.metrics = with_metrics ? &tr->metrics : NULL;
    return rec;
}

// A float for JSON: null when there is no value (JSON has no NaN).
static void json_float(char *buf, size_t len, int has_value, float value) {
    if (has_value) snprintf(buf, len, "%.9g", value);
    else snprintf(buf, len, "null");
}

static void write_summary(Trainer *tr, double seconds, float final_loss) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    char final_val[32], best_val[32], json[2048], device[512] = "";
    if (tr->ops->device_memory_bytes) {
        snprintf(device, sizeof device,
                 "  \"device_name\": \"%s\",\n  \"peak_device_memory_bytes\": %zu,\n  \"nccl_ranks\": %d,\n",
                 tr->ops->device_name(tr->backend), tr->ops->device_memory_bytes(tr->backend),
                 tr->ops->nccl_ranks(tr->backend));
    }
    json_float(final_val, sizeof final_val, tr->val_data != NULL, tr->last_val_loss);
    json_float(best_val, sizeof best_val, tr->val_data != NULL, tr->best_val_loss);
    snprintf(json, sizeof json,
             "{\n  \"policy\": \"%s\",\n  \"backend\": \"%s\",\n  \"num_params\": %zu,\n"
             "  \"bytes_per_param\": %zu,\n  \"steps\": %d,\n  \"tokens\": %lld,\n  \"final_loss\": %.9g,\n"
             "  \"final_val_loss\": %s,\n  \"best_val_loss\": %s,\n  \"mean_tokens_per_s\": %.1f,\n"
             "  \"seconds\": %.3f,\n  \"peak_host_memory_bytes\": %lld,\n%s  \"diverged\": false\n}\n",
             tr->policy.name, tr->ops->name, tr->table.num_params, policy_bytes_per_param(&tr->policy),
             (int)tr->state.step, (long long)tr->state.step * tr->accum_steps * tr->B * tr->T * tr->world, final_loss,
             final_val, best_val, tr->timed_steps ? tr->tokens_per_s_sum / tr->timed_steps : 0.0, seconds,
             (long long)usage.ru_maxrss * 1024, device);
    run_log_summary(&tr->log, json);
}

// The final weights as an llm.c GPT-2 model file, in the format output.export names.
static void export_model(Trainer *tr) {
    const char *format = tr->cfg.output.export_format;
    if (strcmp(format, "none") == 0) return;
    float *params = xmalloc(tr->table.num_params * sizeof(float));
    tr->ops->read_params(tr->backend, params);
    char path[CONFIG_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/model.bin", tr->cfg.output.dir);
    llmc_model_save(path, &tr->table, params, strcmp(format, "bf16") == 0 ? LLMC_VERSION_BF16 : LLMC_VERSION_FP32);
    free(params);
}

static void train(Trainer *tr) {
    const Config *cfg = &tr->cfg;
    int max_steps = cfg->training.max_steps;
    printf("training %zu parameters under policy %s on the %s backend: %d steps of %d x %d x %d tokens",
           tr->table.num_params, tr->policy.name, tr->ops->name, max_steps, tr->accum_steps, tr->B, tr->T);
    if (tr->world > 1) printf(" on each of %d ranks%s", tr->world, tr->cfg.training.zero ? " (ZeRO-1)" : "");
    printf("\n");
    double start = wall_time_seconds();
    float loss = NAN;
    tr->best_val_loss = INFINITY;
    int sampled_last = 0;
    if (cfg->training.warmup_steps > max_steps) {
        printf("note: training.warmup_steps (%d) exceeds training.max_steps (%d): the learning rate stays below "
               "training.lr\n", cfg->training.warmup_steps, max_steps);
    }
    if (tr->val_data && cfg->training.eval_at_start && tr->state.step == 0) evaluate_at_start(tr);
    while ((int)tr->state.step < max_steps) {
        StepRecord rec = train_step(tr);
        loss = rec.loss;
        if (rec.step > 1) {  // the first step includes warm-up effects
            tr->tokens_per_s_sum += rec.tokens_per_s;
            tr->timed_steps++;
        }
        if (tr->val_data && (every(cfg->training.eval_every, rec.step) || rec.step == max_steps)) {
            evaluate(tr, &rec);
            tr->last_val_loss = rec.val_loss;
            if (rec.val_loss < tr->best_val_loss) tr->best_val_loss = rec.val_loss;
        }
        if (tr->rank == 0) run_log_step(&tr->log, &rec);
        sampled_last = tr->tokenizer && every(cfg->training.sample_every, rec.step);
        if (sampled_last && tr->rank == 0) write_sample(tr, rec.step);
        int final_step = rec.step == max_steps && cfg->output.final_checkpoint;
        if (every(cfg->training.checkpoint_every, rec.step) || final_step) save_checkpoint(tr);
    }
    if (tr->rank != 0) return;
    if (tr->tokenizer && !sampled_last && cfg->training.sample_every > 0 && cfg->training.sample_tokens > 0) {
        write_sample(tr, (int)tr->state.step);
    }
    run_log_close(&tr->log);
    export_model(tr);
    write_summary(tr, wall_time_seconds() - start, loss);
    if (tr->ops->device_memory_bytes) print_device_memory(tr);
    printf("done: %d steps; outputs in %s (log.jsonl, samples.txt, model.bin, summary.json, checkpoints/)\n",
           (int)tr->state.step, cfg->output.dir);
}

static int run_program(int argc, char **argv, const BackendOps *cuda_ops, int cuda_devices) {
    cleanup_on_interrupt();
    CliOptions opt = cli_parse(argc, argv);
    if (opt.help) {
        cli_print_help();
        return 0;
    }
    if (opt.formats) {
        formats_print(opt.num_format_names, opt.format_names);
        return 0;
    }
    if (opt.generate) return generate_main(&opt, cuda_ops, cuda_devices);
    Trainer *tr = xcalloc(1, sizeof *tr);
    tr->rank = dist_rank();
    tr->world = dist_world();
    ResumeTarget resume;
    if (opt.resume) resume = find_resume_target(opt.resume);
    load_config(tr, &opt, opt.resume ? &resume : NULL);
    check_same_config(tr);
    if (opt.print_config) {
        char *json = config_to_json(&tr->cfg);
        fputs(json, stdout);
        free(json);
        return 0;
    }
    tr->ops = choose_backend(opt.device, cuda_ops, cuda_devices, opt.dry_run);
    if (opt.dry_run) {
        dry_run(tr);
        return 0;
    }
    open_data(tr);
    create_backend(tr);
    if (opt.resume) {
        if (!resume.checkpoint[0]) fatal("--resume %s: no checkpoint found in %s/checkpoints", opt.resume, resume.run_dir);
        load_checkpoint(tr, resume.checkpoint);
        printf("resumed from %s at step %d\n", resume.checkpoint, (int)tr->state.step);
    }
    open_output(tr);
    train(tr);
    return 0;
}

int train_main(int argc, char **argv, const BackendOps *cuda_ops, int cuda_devices) {
    dist_init(&argc, &argv);
    // Only rank 0 talks; the others' errors still reach stderr.
    if (dist_rank() != 0 && !freopen("/dev/null", "w", stdout)) fatal("cannot silence rank %d's stdout", dist_rank());
    int status = run_program(argc, argv, cuda_ops, cuda_devices);
    dist_finalize();
    return status;
}
