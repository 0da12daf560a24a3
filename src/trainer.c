#include "trainer.h"

#include <glob.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "atomic_file.h"
#include "backend_choice.h"
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
#include "run_dir.h"
#include "run_identity.h"
#include "run_log.h"
#include "sample.h"
#include "sharpness.h"
#include "step_model.h"
#include "tokenizer.h"
#include "util.h"
#include "xxh64.h"

#define CHECKPOINTS_KEPT 2
#define SAMPLE_RNG_TENSOR 0x5A17u
// Exit status of a run stopped as diverged (README, "Runs and resume"); interrupted runs exit 128 + signal.
#define EXIT_DIVERGED 3
// Weight of the newest loss in the moving average that the divergence check judges.
#define LOSS_AVERAGE_WEIGHT 0.1f

// Where the loop stands, saved beside the backend's state in every checkpoint. Only values that the
// training itself determines: two runs of the same config write the same checkpoint bytes.
typedef struct {
    uint64_t step;          // optimizer steps completed
    DataPosition data;
    float first_loss;       // step 1's loss, and the moving average of the losses, for the divergence check
    float loss_average;
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
    char *identity;          // run_identity_text: what a checkpoint of this run records and a resume must match
    UpdateMetrics metrics;   // update-quality sums of a metric step (train_step allocates them on the first)
} Trainer;

// ----------------------------------------------------------------------------------------------------
// configuration

// What --resume names: a run directory (continue from its newest complete checkpoint), a checkpoint in a
// run's checkpoints/ (continue that run from there), or a checkpoint file elsewhere (continue from it in the
// output.dir that --config names).
typedef struct {
    char run_dir[CONFIG_PATH_MAX];     // "" for a checkpoint file outside a run directory
    char checkpoint[CONFIG_PATH_MAX + 64];  // "" until chosen (a run directory's newest complete one)
} ResumeTarget;

// Checkpoint files: step_NNNNNNNN.ckpt, the whole state (written by rank 0), and under ZeRO-1 one file per
// other rank, step_NNNNNNNN.rankR.ckpt, with that rank's shard of the optimizer state.
static void checkpoint_path(char *path, size_t len, const char *dir, int step, int rank) {
    if (rank == 0) snprintf(path, len, "%s/checkpoints/step_%08d.ckpt", dir, step);
    else snprintf(path, len, "%s/checkpoints/step_%08d.rank%d.ckpt", dir, step, rank);
}

static int is_directory(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static ResumeTarget find_resume_target(const char *arg) {
    ResumeTarget target;
    memset(&target, 0, sizeof target);
    if (is_directory(arg)) {
        snprintf(target.run_dir, sizeof target.run_dir, "%s", arg);
        return target;
    }
    if (checkpoint_step_of(arg, 0) < 0 || !file_exists(arg)) {
        fatal("--resume %s: not a run directory, nor a checkpoint file (step_NNNNNNNN.ckpt)", arg);
    }
    snprintf(target.checkpoint, sizeof target.checkpoint, "%s", arg);
    // RUN/checkpoints/step_N.ckpt with RUN/config.json: that run continues.
    char dir[CONFIG_PATH_MAX + 64], config[CONFIG_PATH_MAX + 96];
    snprintf(dir, sizeof dir, "%s", arg);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    else snprintf(dir, sizeof dir, ".");
    const char *parent = strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir;
    if (strcmp(parent, "checkpoints") != 0) return target;
    if (parent == dir) snprintf(dir, sizeof dir, ".");
    else dir[parent - dir - 1] = '\0';
    snprintf(config, sizeof config, "%s/config.json", dir);
    if (strlen(dir) >= sizeof target.run_dir) fatal("--resume %s: path too long", arg);
    if (file_exists(config)) snprintf(target.run_dir, sizeof target.run_dir, "%.*s", CONFIG_PATH_MAX - 1, dir);
    return target;
}

// The newest step whose checkpoint every writing rank completed (under ZeRO-1 each rank writes its own file,
// and a job killed between the ranks' writes leaves a step that only some of them have), or -1.
static int newest_complete_step(const char *dir, int writer_ranks) {
    char pattern[CONFIG_PATH_MAX + 64], path[CONFIG_PATH_MAX + 64];
    snprintf(pattern, sizeof pattern, "%s/checkpoints/step_*.ckpt", dir);
    glob_t found;
    if (glob(pattern, 0, NULL, &found) != 0) return -1;
    int best = -1;
    for (size_t i = 0; i < found.gl_pathc; i++) {
        int step = checkpoint_step_of(found.gl_pathv[i], 0);
        if (step <= best) continue;
        int complete = 1;
        for (int r = 1; r < writer_ranks && complete; r++) {
            checkpoint_path(path, sizeof path, dir, step, r);
            complete = file_exists(path);
        }
        if (complete) best = step;
    }
    globfree(&found);
    return best;
}

static void choose_resume_checkpoint(const Trainer *tr, ResumeTarget *target) {
    if (target->checkpoint[0]) return;
    int writers = tr->cfg.training.zero ? tr->world : 1;
    int step = newest_complete_step(target->run_dir, writers);
    if (step < 0) {
        fatal("--resume %s: no complete checkpoint in %s/checkpoints (set training.checkpoint_every, or let a run "
              "reach its end or an interrupt, to write one)", target->run_dir, target->run_dir);
    }
    checkpoint_path(target->checkpoint, sizeof target->checkpoint, target->run_dir, step, 0);
}

static void load_config(Trainer *tr, const CliOptions *opt, const ResumeTarget *resume) {
    Config *cfg = &tr->cfg;
    config_defaults(cfg);
    if (opt->config) {
        config_load(cfg, opt->config, NULL);
    } else if (resume && resume->run_dir[0]) {
        char path[CONFIG_PATH_MAX + 16];
        snprintf(path, sizeof path, "%.*s/config.json", CONFIG_PATH_MAX - 1, resume->run_dir);
        config_load(cfg, path, NULL);
    } else if (resume) {
        fatal("--resume %s: this checkpoint is not in a run's checkpoints/ directory, so no run config comes with "
              "it: give --config FILE as well; the run continues in that config's output.dir", resume->checkpoint);
    } else {
        fatal("no config given: use --config FILE (for example --config tiny_cpu.json), or --resume DIR");
    }
    for (int i = 0; i < opt->num_sets; i++) config_set(cfg, opt->sets[i]);
    if (resume && resume->run_dir[0]) snprintf(cfg->output.dir, sizeof cfg->output.dir, "%s", resume->run_dir);
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
    // The activation plan multiplies B*T by the widths and by T again (attention): keep it countable.
    double rows = (double)tr->B * tr->T, width = (double)shape.n_layer * (16.0 * shape.n_embd + shape.n_head * (double)tr->T);
    if (rows * (width + shape.padded_vocab) > 0x1p50) {
        fatal("training.batch_size %d x training.seq_len %d: the activations of this model would exceed 2^50 values",
              tr->B, tr->T);
    }
    // tokens_per_step counts the tokens of all ranks together.
    long step_tokens = (long)tr->B * tr->T * tr->world;
    if (cfg->training.tokens_per_step % step_tokens != 0) {
        fatal("training.tokens_per_step (%ld) must be 0 or a multiple of training.batch_size * training.seq_len * "
              "ranks (%d * %d * %d = %ld)", cfg->training.tokens_per_step, tr->B, tr->T, tr->world, step_tokens);
    }
    tr->accum_steps = cfg->training.tokens_per_step ? (int)(cfg->training.tokens_per_step / step_tokens) : 1;
}

// Every rank must train the same model on the same data with the same settings: each compares a hash of
// `text` (its resolved config, or its data's identity) with every other rank's; `rule` says what must agree.
static void check_same_on_all_ranks(const Trainer *tr, const char *text, const char *what, const char *rule) {
    if (tr->world == 1) return;
    uint64_t *hashes = xcalloc((size_t)tr->world, sizeof(uint64_t));
    size_t *bounds = xmalloc((size_t)(tr->world + 1) * sizeof(size_t));
    for (int r = 0; r <= tr->world; r++) bounds[r] = (size_t)r;
    hashes[tr->rank] = xxh64(text, strlen(text));
    dist_all_gather(hashes, sizeof(uint64_t), bounds);
    // Every rank looks at every hash, so that all stop before any of them writes a thing.
    for (int r = 1; r < tr->world; r++) {
        if (hashes[r] != hashes[0]) fatal("rank %d's %s differs from rank 0's: %s", r, what, rule);
    }
    free(hashes);
    free(bounds);
}

static void check_same_config(const Trainer *tr) {
    char *json = config_to_json(&tr->cfg);
    check_same_on_all_ranks(tr, json, "configuration", "every rank must run with the same config and --set options");
    free(json);
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
    size_t per_param = policy_bytes_per_param(&tr->policy), per_embedding = policy_embedding_bytes_per_param(&tr->policy);
    size_t embeddings = tr->table.tensors[PARAM_WTE].numel + tr->table.tensors[PARAM_WPE].numel;
    printf("  weights + gradients + optimizer state  %10.1f MiB  (%zu params x %zu bytes/param by policy", state / MiB,
           tr->table.num_params, per_param);
    if (per_embedding != per_param) printf(", of them %zu embedding params x %zu", embeddings, per_embedding);
    // What a backend keeps beyond the policy's storage: the CPU an fp32 copy of weights not stored in fp32 for
    // its passes, and an fp32 scratch for bf16 gradients; the CUDA backend reads them as stored. DQT adds one
    // fp32 step per grid matrix slice.
    int cpu = tr->ops == &cpu_backend, copy = cpu && tr->policy.weights != WEIGHTS_FP32;
    int scratch = cpu && tr->policy.grads == GRADS_BF16;
    if (copy || scratch)
        printf("; the cpu backend adds %s%s%s", copy ? "the fp32 copy of the weights that its forward reads" : "",
               copy && scratch ? ", and " : "", scratch ? "an fp32 gradient scratch" : "");
    if (tr->policy.weights == WEIGHTS_INT_GRID) printf("; each grid matrix slice keeps an fp32 step");
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

// The device backend's modelled step (step_model.h), beside the pre-issue-16 design's traffic. Rows are
// indented apart from the memory plan's and the parameter table's, which scripts parse.
static void print_step_model(const Trainer *tr, DeviceSpec device) {
    StepModelInput in = step_model_input(&tr->policy, &tr->table, tr->B, tr->T, tr->accum_steps);
    StepModel model = step_model(&in, &device);
    in.legacy_design = 1;
    StepModel legacy = step_model(&in, &device);
    printf("step model (the %s backend's design at its roofline: bf16 %.1f, tf32 %.1f, fp32 %.1f TFLOP/s, %.2f TB/s):\n",
           tr->ops->name, device.peak_bf16 / 1e12, device.peak_tf32 / 1e12, device.peak_fp32 / 1e12,
           device.bandwidth / 1e12);
    printf("    %-36s %12s %12s %10s\n", "per micro-step", "GFLOP", "GB moved", "ms");
    for (int g = 0; g < STEP_NUM_GROUPS; g++) {
        const StepCost *c = &model.groups[g];
        char label[64];
        snprintf(label, sizeof label, "%s%s", step_group_name((StepGroup)g),
                 g == STEP_OPTIMIZER ? " (per optimizer step)" : "");
        printf("    %-36s %12.1f %12.2f %10.2f\n", label, c->flops / 1e9, c->bytes / 1e9, c->seconds * 1e3);
    }
    printf("  modelled micro-step %.2f ms (optimizer / %d accumulation steps included): %.0f tokens/s, MFU ceiling "
           "%.1f%% (6P + 6LCT = %.1f MFLOP/token, of the bf16 peak)\n", model.micro_step_seconds * 1e3,
           tr->accum_steps, model.tokens_per_second, 100 * model.mfu_ceiling, model.model_flops_per_token / 1e6);
    printf("  traffic per token: %.2f MB (the pre-issue-16 design: %.2f MB, %.1fx)\n", model.bytes_per_token / 1e6,
           legacy.bytes_per_token / 1e6, legacy.bytes_per_token / model.bytes_per_token);
}

static void dry_run(const Trainer *tr) {
    const ModelShape *s = &tr->table.shape;
    int device_backend = tr->ops != &cpu_backend;  // the CPU backend has no step model
    DeviceSpec device;
    if (device_backend) device = device_spec_from_environment();  // its errors before any output
    printf("model: GPT-2, %d layers, %d heads, n_embd %d, block_size %d, vocab %d (padded %d)\n", s->n_layer,
           s->n_head, s->n_embd, s->block_size, s->vocab_size, s->padded_vocab);
    param_table_print(&tr->table);
    policy_print(&tr->policy);
    print_memory_plan(tr);
    if (device_backend) print_step_model(tr, device);
}

// ----------------------------------------------------------------------------------------------------
// checkpoints

// The sections of a checkpoint: the run's identity (text with its NUL), the loop's state, the backend's.
static int checkpoint_sections(Trainer *tr, CheckpointSection *sections) {
    BackendState *bs = tr->ops->state_save(tr->backend);
    sections[0] = (CheckpointSection){"identity", tr->identity, strlen(tr->identity) + 1};
    sections[1] = (CheckpointSection){"trainer", &tr->state, sizeof tr->state};
    for (int i = 0; i < bs->count; i++) sections[2 + i] = bs->sections[i];
    return 2 + bs->count;
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

// A checkpoint continues only the run that wrote it: its identity (config keys that may not change, ranks,
// data) must equal this run's, checked before anything else of the file is used.
static void check_checkpoint_identity(const Trainer *tr, const CheckpointFile *file, const char *path) {
    size_t nbytes;
    const char *saved = checkpoint_section(file, "identity", &nbytes);
    if (nbytes == 0 || saved[nbytes - 1] != '\0') fatal("checkpoint %s: its identity section is not text (corrupt)", path);
    Config earlier;
    config_before_new_keys(&earlier);
    char *earlier_identity = config_identity_text(&earlier);
    run_identity_check(path, saved, tr->identity, earlier_identity);
    free(earlier_identity);
}

static void load_checkpoint(Trainer *tr, const char *root_path) {
    // Under ZeRO-1 rank r > 0 reads its own file, step_N.ckpt -> step_N.rankR.ckpt (with the identity too).
    char path[CONFIG_PATH_MAX + 80];
    snprintf(path, sizeof path, "%s", root_path);
    if (tr->cfg.training.zero && tr->rank != 0) {
        int stem = (int)(strlen(root_path) - strlen(".ckpt"));
        snprintf(path, sizeof path, "%.*s.rank%d.ckpt", stem, root_path, tr->rank);
    }
    CheckpointFile *file = checkpoint_open(path);
    check_checkpoint_identity(tr, file, path);
    CheckpointSection sections[16];
    int count = checkpoint_sections(tr, sections);
    checkpoint_copy_all(file, sections, count);
    checkpoint_close(file);
    if ((int)tr->state.step != checkpoint_step_of(root_path, 0)) {
        fatal("checkpoint %s holds step %d, not the step its name says: rename it step_%08d.ckpt", path,
              (int)tr->state.step, (int)tr->state.step);
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
    char *data_identity = data_identity_text(tr->train_data);
    check_same_on_all_ranks(tr, data_identity, "training data",
                            "every rank must read the same shards (same names, sizes and contents)");
    free(data_identity);
    tr->identity = run_identity_text(cfg, tr->train_data, tr->world);
    if (cfg->data.tokenizer[0]) {
        tr->tokenizer = tokenizer_load(cfg->data.tokenizer);
        if (tokenizer_vocab_size(tr->tokenizer) < cfg->model.vocab_size) {
            printf("warning: the tokenizer %s knows %d tokens, fewer than model.vocab_size = %d: samples will show "
                   "nothing for the ids it lacks\n", cfg->data.tokenizer, tokenizer_vocab_size(tr->tokenizer),
                   cfg->model.vocab_size);
        }
    }
    tr->inputs = xmalloc((size_t)tr->B * tr->T * sizeof(int));
    tr->targets = xmalloc((size_t)tr->B * tr->T * sizeof(int));
}

// A model to start from must hold numbers: a NaN or infinity would only show as a diverged first step.
static void check_finite_params(const char *path, const ParamTable *table, const float *params) {
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const ParamTensor *tensor = &table->tensors[t];
        for (size_t i = 0; i < tensor->numel; i++) {
            float value = params[tensor->offset + i];
            if (!isfinite(value)) {
                fatal("model.init_from %s: tensor %s holds %g at element %zu: a model to start from must be finite",
                      path, tensor->name, value, i);
            }
        }
    }
}

static void create_backend(Trainer *tr) {
    float *params = xmalloc(tr->table.num_params * sizeof(float));
    if (tr->cfg.model.init_from[0]) {
        llmc_model_load(tr->cfg.model.init_from, &tr->table, params);
        check_finite_params(tr->cfg.model.init_from, &tr->table, params);
    } else gpt_init_params(&tr->table, params, tr->cfg.training.seed);
    tr->backend = tr->ops->create(&tr->table, &tr->policy, tr->B, tr->T, params);
    free(params);
    if (tr->cfg.training.zero) tr->ops->shard_optimizer_state(tr->backend);
}

// Only now, with config, data, model and checkpoint all checked, does the run touch its output directory:
// rank 0 claims it (lock, overwrite, stale temporary files), starts a branch when the run resumes from an
// older checkpoint than the newest, writes config.json and opens the log. Under ZeRO-1 the other ranks write
// their checkpoints into the directory once rank 0 has claimed it.
static void open_output(Trainer *tr, RunDirUse use) {
    const char *dir = tr->cfg.output.dir;
    int step = (int)tr->state.step;
    if (tr->rank == 0) {
        run_dir_claim(dir, use, tr->cfg.output.overwrite);
        int moved = use == RUN_DIR_CONTINUE ? run_dir_supersede_after(dir, step) : 0;
        if (moved) {
            printf("resuming from step %d starts a branch: %d newer checkpoint file(s) moved to "
                   "%s/checkpoints/superseded/ (kept), log.jsonl and samples.txt cut at step %d\n", step, moved, dir,
                   step);
        }
        char path[CONFIG_PATH_MAX + 64];
        snprintf(path, sizeof path, "%s/config.json", dir);
        char *json = config_to_json(&tr->cfg);
        atomic_file_write_text(path, "config", json);
        free(json);
        run_log_open(&tr->log, dir, tr->cfg.training.max_steps, step);
    }
    dist_barrier();
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

// One optimizer step. A non-finite loss or gradient norm leaves the weights as they were and is reported
// in the record (the caller stops the run as diverged).
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
    AdamWStep hp = adamw_hyperparameters(tr, step, grad_norm);
    int finite = isfinite(loss) && isfinite(grad_norm);
    int with_metrics = finite && every(tr->cfg.metrics.every, step + 1);
    if (with_metrics && !tr->metrics.groups) update_metrics_init(&tr->metrics, &tr->table);
    if (finite) tr->ops->optimizer_step(tr->backend, &hp, with_metrics ? &tr->metrics : NULL);
    double seconds = wall_time_seconds() - start;

    StepRecord rec;
    memset(&rec, 0, sizeof rec);
    rec.step = step + 1;
    rec.loss = loss;
    rec.lr = hp.lr;
    rec.grad_norm = grad_norm;
    rec.ms = 1000.0 * seconds;
    rec.tokens_per_s = (double)tr->accum_steps * tr->B * tr->T * tr->world / seconds;
    rec.metrics = with_metrics ? &tr->metrics : NULL;
    return rec;
}

// Divergence is judged on a moving average of the losses, so that one noisy step does not end a run:
// diverged when a loss or gradient norm is not finite, or when the average exceeds step 1's loss by
// training.divergence_margin (0: never). Writes the reason into `why`.
static int diverged(Trainer *tr, const StepRecord *rec, char *why, size_t len) {
    if (!isfinite(rec->loss) || !isfinite(rec->grad_norm)) {
        snprintf(why, len, "step %d: the loss (%g) or gradient norm (%g) is not finite", rec->step, rec->loss,
                 rec->grad_norm);
        return 1;
    }
    TrainerState *s = &tr->state;
    if (rec->step == 1) s->first_loss = s->loss_average = rec->loss;
    else s->loss_average = (1.0f - LOSS_AVERAGE_WEIGHT) * s->loss_average + LOSS_AVERAGE_WEIGHT * rec->loss;
    float margin = tr->cfg.training.divergence_margin;
    if (margin > 0.0f && s->loss_average > s->first_loss + margin) {
        snprintf(why, len, "step %d: the loss's moving average (%.4f) exceeds the first loss (%.4f) by more than "
                 "training.divergence_margin (%g)", rec->step, s->loss_average, s->first_loss, margin);
        return 1;
    }
    return 0;
}

// A float for JSON: null when there is no value (JSON has no NaN or infinities).
static void json_float(char *buf, size_t len, int has_value, float value) {
    if (has_value && isfinite(value)) snprintf(buf, len, "%.9g", value);
    else snprintf(buf, len, "null");
}

// How a run ended, for summary.json and the exit status.
typedef struct {
    int status;        // 0, EXIT_DIVERGED, or 128 + the signal that interrupted it
    int diverged_step; // 0 when it did not diverge
    float final_loss;
} RunEnd;

static void write_summary(Trainer *tr, const RunEnd *end) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    const RunHistory *h = &tr->log.history;
    char final_loss[32], final_val[32], best_val[32], diverged_step[32], json[2048], device[512] = "";
    if (tr->ops->device_memory_bytes) {
        snprintf(device, sizeof device,
                 "  \"device_name\": \"%s\",\n  \"peak_device_memory_bytes\": %zu,\n  \"nccl_ranks\": %d,\n",
                 tr->ops->device_name(tr->backend), tr->ops->device_memory_bytes(tr->backend),
                 tr->ops->nccl_ranks(tr->backend));
    }
    json_float(final_loss, sizeof final_loss, 1, end->final_loss);
    json_float(final_val, sizeof final_val, h->has_val, h->last_val_loss);
    json_float(best_val, sizeof best_val, h->has_val, h->best_val_loss);
    if (end->diverged_step) snprintf(diverged_step, sizeof diverged_step, "%d", end->diverged_step);
    else snprintf(diverged_step, sizeof diverged_step, "null");
    snprintf(json, sizeof json,
             "{\n  \"policy\": \"%s\",\n  \"backend\": \"%s\",\n  \"num_params\": %zu,\n"
             "  \"bytes_per_param\": %zu,\n  \"embedding_bytes_per_param\": %zu,\n  \"steps\": %d,\n  \"tokens\": %lld,\n  \"final_loss\": %s,\n"
             "  \"final_val_loss\": %s,\n  \"best_val_loss\": %s,\n  \"mean_tokens_per_s\": %.1f,\n"
             "  \"seconds\": %.3f,\n  \"peak_host_memory_bytes\": %lld,\n%s  \"interrupted\": %s,\n"
             "  \"diverged\": %s,\n  \"diverged_step\": %s\n}\n",
             tr->policy.name, tr->ops->name, tr->table.num_params, policy_bytes_per_param(&tr->policy),
             policy_embedding_bytes_per_param(&tr->policy), (int)tr->state.step, (long long)tr->state.step * tr->accum_steps * tr->B * tr->T * tr->world, final_loss,
             final_val, best_val, h->timed_steps ? h->tokens_per_s_sum / h->timed_steps : 0.0, run_log_seconds(&tr->log),
             (long long)usage.ru_maxrss * 1024, device, end->status > 128 ? "true" : "false",
             end->diverged_step ? "true" : "false", diverged_step);
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

// The signal that every rank has been sent (mpirun forwards one to all), agreed on so that all ranks stop
// after the same step; 0 when none.
static int agreed_interrupt(void) {
    int sig = pending_interrupt_signal();
    double noted[2] = {sig == SIGINT, sig == SIGTERM};
    dist_all_reduce_sum_doubles(noted, 2);
    return noted[1] > 0 ? SIGTERM : noted[0] > 0 ? SIGINT : 0;
}

// The steps up to max_steps, or until the run diverges or a signal asks it to stop.
static RunEnd train_steps(Trainer *tr) {
    const Config *cfg = &tr->cfg;
    int max_steps = cfg->training.max_steps;
    RunEnd end = {0, 0, NAN};
    while ((int)tr->state.step < max_steps) {
        StepRecord rec = train_step(tr);
        end.final_loss = rec.loss;
        char why[256];
        if (diverged(tr, &rec, why, sizeof why)) {
            if (tr->rank == 0) run_log_step(&tr->log, &rec);
            fprintf(stderr, "train_gpt: %s: the run diverged (summary.json says so; exit status %d)\n", why,
                    EXIT_DIVERGED);
            end.status = EXIT_DIVERGED;
            end.diverged_step = rec.step;
            return end;
        }
        tr->state.step++;
        if (tr->val_data && (every(cfg->training.eval_every, rec.step) || rec.step == max_steps)) evaluate(tr, &rec);
        if (tr->rank == 0) run_log_step(&tr->log, &rec);
        if (tr->tokenizer && every(cfg->training.sample_every, rec.step) && tr->rank == 0) write_sample(tr, rec.step);
        int saved = every(cfg->training.checkpoint_every, rec.step) || (rec.step == max_steps && cfg->output.final_checkpoint);
        if (saved) save_checkpoint(tr);
        int sig = agreed_interrupt();
        if (sig && rec.step < max_steps) {
            if (!saved) save_checkpoint(tr);
            printf("\ninterrupted by %s after step %d: checkpoint written; continue with --resume %s\n",
                   sig == SIGINT ? "SIGINT" : "SIGTERM", rec.step, cfg->output.dir);
            end.status = 128 + sig;
            return end;
        }
    }
    return end;
}

static int train(Trainer *tr) {
    const Config *cfg = &tr->cfg;
    int max_steps = cfg->training.max_steps;
    printf("training %zu parameters under policy %s on the %s backend: %d steps of %d x %d x %d tokens",
           tr->table.num_params, tr->policy.name, tr->ops->name, max_steps, tr->accum_steps, tr->B, tr->T);
    if (tr->world > 1) printf(" on each of %d ranks%s", tr->world, tr->cfg.training.zero ? " (ZeRO-1)" : "");
    printf("\n");
    if (cfg->training.warmup_steps > max_steps) {
        printf("note: training.warmup_steps (%d) exceeds training.max_steps (%d): the learning rate stays below "
               "training.lr\n", cfg->training.warmup_steps, max_steps);
    }
    if (tr->val_data && cfg->training.eval_at_start && tr->state.step == 0) evaluate_at_start(tr);
    defer_interrupts();
    RunEnd end = train_steps(tr);
    if (tr->rank != 0) return end.status;
    int finished = end.status == 0;
    // A final sample, unless the last step wrote one or samples are off.
    if (finished && tr->tokenizer && cfg->training.sample_every > 0 && cfg->training.sample_tokens > 0 &&
        !every(cfg->training.sample_every, max_steps)) {
        write_sample(tr, max_steps);
    }
    run_log_close(&tr->log);
    if (finished) export_model(tr);
    write_summary(tr, &end);
    if (tr->ops->device_memory_bytes) print_device_memory(tr);
    if (finished) {
        printf("done: %d steps; outputs in %s (log.jsonl, samples.txt, model.bin, summary.json, checkpoints/)\n",
               (int)tr->state.step, cfg->output.dir);
    }
    return end.status;
}

// A run whose checkpoint is at training.max_steps is complete: say so and how to extend it, touch nothing.
static int resume_is_complete(const Trainer *tr, const ResumeTarget *resume, const char *arg) {
    int step = checkpoint_step_of(resume->checkpoint, 0), max_steps = tr->cfg.training.max_steps;
    if (step > max_steps) {
        fatal("%s is at step %d, beyond training.max_steps = %d: set training.max_steps above %d to continue",
              resume->checkpoint, step, max_steps, step);
    }
    if (step < max_steps) return 0;
    printf("the run in %s is complete: %s is at training.max_steps = %d. To train further: --resume %s "
           "--set training.max_steps=N (N > %d)\n", tr->cfg.output.dir, resume->checkpoint, step, arg, step);
    return 1;
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
    RunDirUse use = opt.resume && resume.run_dir[0] ? RUN_DIR_CONTINUE : RUN_DIR_NEW;
    if (opt.resume) {
        choose_resume_checkpoint(tr, &resume);
        if (resume_is_complete(tr, &resume, opt.resume)) return 0;
    }
    if (tr->rank == 0) run_dir_check(tr->cfg.output.dir, use, tr->cfg.output.overwrite);
    open_data(tr);
    create_backend(tr);
    if (opt.resume) {
        load_checkpoint(tr, resume.checkpoint);
        printf("resumed from %s at step %d\n", resume.checkpoint, (int)tr->state.step);
    }
    open_output(tr, use);
    return train(tr);
}

int train_main(int argc, char **argv, const BackendOps *cuda_ops, int cuda_devices) {
    dist_init(&argc, &argv);
    // Only rank 0 talks; the others' errors still reach stderr.
    if (dist_rank() != 0 && !freopen("/dev/null", "w", stdout)) fatal("cannot silence rank %d's stdout", dist_rank());
    int status = run_program(argc, argv, cuda_ops, cuda_devices);
    dist_finalize();
    return status;
}
