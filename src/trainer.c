#include "trainer.h"

#include <glob.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "atomic_file.h"
#include "checkpoint.h"
#include "cli.h"
#include "config.h"
#include "data.h"
#include "formats.h"
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
    DataPosition data;
} TrainerState;

typedef struct {
    Config cfg;
    Policy policy;
    ParamTable table;
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

static int checkpoint_step_of(const char *path) {
    const char *base = strrchr(path, '/');
    int step = -1;
    if (sscanf(base ? base + 1 : path, "step_%d.ckpt", &step) != 1) return -1;
    return step;
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
            int step = checkpoint_step_of(found.gl_pathv[i]);
            if (step > best) {
                best = step;
                snprintf(target.checkpoint, sizeof target.checkpoint, "%s", found.gl_pathv[i]);
            }
        }
        globfree(&found);
        snprintf(target.run_dir, sizeof target.run_dir, "%s", arg);
        return target;
    }
    if (checkpoint_step_of(arg) < 0 || !file_exists(arg)) {
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
    long micro_tokens = (long)tr->B * tr->T;
    tr->accum_steps = cfg->training.tokens_per_step ? (int)(cfg->training.tokens_per_step / micro_tokens) : 1;
}

static const BackendOps *choose_backend(DeviceChoice device, const BackendOps *cuda_ops, int cuda_devices) {
    if (device == DEVICE_CPU) return &cpu_backend;
    if (device == DEVICE_CUDA) {
        if (cuda_devices == 0) fatal("--device cuda: no CUDA GPU is visible (use --device cpu or auto)");
        if (!cuda_ops) fatal("--device cuda: this build has no CUDA backend yet (use --device cpu or auto)");
        return cuda_ops;
    }
    if (cuda_devices > 0 && cuda_ops) return cuda_ops;
    if (cuda_devices > 0) printf("note: %d GPU(s) found, but the CUDA backend is not built yet: training on the CPU\n", cuda_devices);
    else printf("note: no GPU found: training on the CPU backend\n");
    return &cpu_backend;
}

// ----------------------------------------------------------------------------------------------------
// dry run

static void print_memory_plan(const Trainer *tr) {
    const double MiB = 1024.0 * 1024.0;
    size_t state = tr->ops->plan_state_bytes(&tr->table, &tr->policy);
    size_t acts = tr->ops->plan_activation_bytes(&tr->table, tr->B, tr->T);
    printf("memory plan (%s backend, micro-batch %d x %d, %d accumulation step%s):\n", tr->ops->name, tr->B, tr->T,
           tr->accum_steps, tr->accum_steps == 1 ? "" : "s");
    printf("  weights + gradients + optimizer state  %10.1f MiB  (%zu params x %zu bytes/param by policy",
           state / MiB, tr->table.num_params, policy_bytes_per_param(&tr->policy));
    if (state != tr->table.num_params * policy_bytes_per_param(&tr->policy)) {
        printf("; the CPU backend adds the fp32 copy of the weights that its forward reads, and an fp32 "
               "gradient scratch under bf16 gradients");
    }
    printf(")\n");
    printf("  activations                            %10.1f MiB\n", acts / MiB);
    printf("  total                                  %10.1f MiB\n", (state + acts) / MiB);
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

static void remove_old_checkpoints(const char *dir, int newest_step) {
    char pattern[CONFIG_PATH_MAX + 64];
    snprintf(pattern, sizeof pattern, "%s/checkpoints/step_*.ckpt", dir);
    glob_t found;
    if (glob(pattern, 0, NULL, &found) != 0) return;
    int kept = 0;
    for (size_t i = found.gl_pathc; i-- > 0;) {  // sorted by name, zero-padded: newest last
        if (checkpoint_step_of(found.gl_pathv[i]) > newest_step) continue;
        if (++kept > CHECKPOINTS_KEPT) unlink(found.gl_pathv[i]);
    }
    globfree(&found);
}

static void save_checkpoint(Trainer *tr) {
    char path[CONFIG_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/checkpoints/step_%08d.ckpt", tr->cfg.output.dir, (int)tr->state.step);
    tr->state.data = dataloader_position(tr->train_data);
    CheckpointSection sections[16];
    int count = checkpoint_sections(tr, sections);
    checkpoint_write(path, sections, count);
    remove_old_checkpoints(tr->cfg.output.dir, (int)tr->state.step);
}

static void load_checkpoint(Trainer *tr, const char *path) {
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
    tr->train_data = dataloader_open(cfg->data.train, tr->B, tr->T, 0, 1, cfg->model.vocab_size,
                                     cfg->training.seed, 1);
    if (cfg->data.val[0] && cfg->training.eval_every > 0) {
        tr->val_data = dataloader_open(cfg->data.val, tr->B, tr->T, 0, 1, cfg->model.vocab_size, 0, 0);
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
    tr->state.seed = tr->cfg.training.seed;
    tr->state.num_params = tr->table.num_params;
}

// Only now, with config, data, model and checkpoint all checked, does the run touch its output directory.
static void open_output(Trainer *tr) {
    char path[CONFIG_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/checkpoints", tr->cfg.output.dir);
    make_dirs(path);
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
    const float *logits = tr->ops->logits(tr->backend);  // (B, T, Vp)
    double sum = 0.0;
    for (int b = 0; b < tr->B; b++) {
        size_t last = (size_t)b * tr->T + tr->T - 1;
        sum += logit_sharpness(logits + last * shape->padded_vocab, shape->vocab_size, tr->targets[last],
                               tr->cfg.metrics.sharpness, tr->cfg.metrics.sharpness_steps);
    }
    return sum / tr->B;
}

// Validation loss over eval_batches batches; and, when metrics.sharpness is set, the logit sharpness.
static void evaluate(Trainer *tr, StepRecord *rec) {
    dataloader_reset(tr->val_data);
    double loss_sum = 0.0, sharpness_sum = 0.0;
    for (int i = 0; i < tr->cfg.training.eval_batches; i++) {
        dataloader_next(tr->val_data, tr->inputs, tr->targets);
        loss_sum += tr->ops->forward(tr->backend, tr->inputs, tr->targets, tr->B, tr->T);
        if (tr->cfg.metrics.sharpness > 0.0f) sharpness_sum += batch_sharpness(tr);
    }
    rec->has_val = 1;
    rec->val_loss = (float)(loss_sum / tr->cfg.training.eval_batches);
    rec->has_sharpness = tr->cfg.metrics.sharpness > 0.0f;
    rec->sharpness = (float)(sharpness_sum / tr->cfg.training.eval_batches);
}

static void write_sample(Trainer *tr, int step) {
    RngKey key = {tr->cfg.training.seed, (uint64_t)step, SAMPLE_RNG_TENSOR};
    char *text = sample_text(tr->ops, tr->backend, tr->tokenizer, tr->table.shape.vocab_size,
                             tr->table.shape.padded_vocab, tr->T, tr->cfg.training.sample_tokens, key);
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
    for (int micro = 0; micro < tr->accum_steps; micro++) {
        dataloader_next(tr->train_data, tr->inputs, tr->targets);
        loss_sum += tr->ops->forward(tr->backend, tr->inputs, tr->targets, tr->B, tr->T);
        tr->ops->backward(tr->backend, 1.0f / (float)tr->accum_steps);
    }
    float loss = (float)(loss_sum / tr->accum_steps);
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
    rec.tokens_per_s = (double)tr->accum_steps * tr->B * tr->T / seconds;
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
    char final_val[32], best_val[32], json[2048];
    json_float(final_val, sizeof final_val, tr->val_data != NULL, tr->last_val_loss);
    json_float(best_val, sizeof best_val, tr->val_data != NULL, tr->best_val_loss);
    snprintf(json, sizeof json,
             "{\n  \"policy\": \"%s\",\n  \"backend\": \"%s\",\n  \"num_params\": %zu,\n"
             "  \"bytes_per_param\": %zu,\n  \"steps\": %d,\n  \"tokens\": %lld,\n  \"final_loss\": %.9g,\n"
             "  \"final_val_loss\": %s,\n  \"best_val_loss\": %s,\n  \"mean_tokens_per_s\": %.1f,\n"
             "  \"seconds\": %.3f,\n  \"peak_host_memory_bytes\": %lld,\n  \"diverged\": false\n}\n",
             tr->policy.name, tr->ops->name, tr->table.num_params, policy_bytes_per_param(&tr->policy),
             (int)tr->state.step, (long long)tr->state.step * tr->accum_steps * tr->B * tr->T, final_loss,
             final_val, best_val, tr->timed_steps ? tr->tokens_per_s_sum / tr->timed_steps : 0.0, seconds,
             (long long)usage.ru_maxrss * 1024);
    run_log_summary(&tr->log, json);
}

static void export_model(Trainer *tr) {
    float *params = xmalloc(tr->table.num_params * sizeof(float));
    tr->ops->read_params(tr->backend, params);
    char path[CONFIG_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/model.bin", tr->cfg.output.dir);
    llmc_model_save(path, &tr->table, params, LLMC_VERSION_FP32);
    free(params);
}

static void train(Trainer *tr) {
    const Config *cfg = &tr->cfg;
    int max_steps = cfg->training.max_steps;
    printf("training %zu parameters under policy %s on the %s backend: %d steps of %d x %d x %d tokens\n",
           tr->table.num_params, tr->policy.name, tr->ops->name, max_steps, tr->accum_steps, tr->B, tr->T);
    double start = wall_time_seconds();
    float loss = NAN;
    tr->best_val_loss = INFINITY;
    int sampled_last = 0;
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
        run_log_step(&tr->log, &rec);
        sampled_last = tr->tokenizer && every(cfg->training.sample_every, rec.step);
        if (sampled_last) write_sample(tr, rec.step);
        if (every(cfg->training.checkpoint_every, rec.step) || rec.step == max_steps) save_checkpoint(tr);
    }
    if (tr->tokenizer && !sampled_last && cfg->training.sample_tokens > 0) write_sample(tr, (int)tr->state.step);
    run_log_close(&tr->log);
    export_model(tr);
    write_summary(tr, wall_time_seconds() - start, loss);
    printf("done: %d steps; outputs in %s (log.jsonl, samples.txt, model.bin, summary.json, checkpoints/)\n",
           (int)tr->state.step, cfg->output.dir);
}

int train_main(int argc, char **argv, const BackendOps *cuda_ops, int cuda_devices) {
    CliOptions opt = cli_parse(argc, argv);
    if (opt.help) {
        cli_print_help();
        return 0;
    }
    if (opt.formats) {
        formats_print(opt.num_format_names, opt.format_names);
        return 0;
    }
    Trainer *tr = xcalloc(1, sizeof *tr);
    ResumeTarget resume;
    if (opt.resume) resume = find_resume_target(opt.resume);
    load_config(tr, &opt, opt.resume ? &resume : NULL);
    if (opt.print_config) {
        char *json = config_to_json(&tr->cfg);
        fputs(json, stdout);
        free(json);
        return 0;
    }
    tr->ops = choose_backend(opt.device, cuda_ops, cuda_devices);
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
