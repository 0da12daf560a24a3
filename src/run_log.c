#include "run_log.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "atomic_file.h"
#include "util.h"

double wall_time_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// The step a line of log.jsonl records, or -1 when it is not a step record.
static int log_line_step(const char *line) {
    int step;
    return sscanf(line, "{\"step\": %d", &step) == 1 ? step : -1;
}

// The step of a sample header of samples.txt ("--- step N ---"), or -1.
static int sample_header_step(const char *line) {
    int step, end = -1;
    sscanf(line, "--- step %d ---%n", &step, &end);
    return end > 0 && (line[end] == '\n' || line[end] == '\0') ? step : -1;
}

// Keeps what a text file says about steps up to resume_step: a resumed run rewrites the steps after its
// checkpoint. log.jsonl: the lines of those steps; samples.txt: everything before the first sample of a
// later step.
static void truncate_history(const char *path, const char *what, int resume_step) {
    if (!file_exists(path)) return;
    size_t nbytes;
    char *text = read_whole_file(path, &nbytes);
    char *kept = xmalloc(nbytes + 1);
    size_t kept_len = 0;
    int is_log = strcmp(what, "log") == 0;
    for (char *line = text; *line;) {
        char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) + 1 : strlen(line);
        if (is_log) {
            int step = log_line_step(line);
            if (step < 0 || step > resume_step) {
                line += len;
                continue;
            }
        } else if (sample_header_step(line) > resume_step) {
            break;
        }
        memcpy(kept + kept_len, line, len);
        kept_len += len;
        line += len;
    }
    kept[kept_len] = '\0';
    if (kept_len != nbytes) atomic_file_write_text(path, what, kept);
    free(kept);
    free(text);
}

// One logged record in the run's history: its speed (after step 1, whose time includes warm-up effects) and
// its validation loss. Both the resumed history (read from log.jsonl) and the live one grow through here, so
// summary.json describes exactly what the log holds.
static void history_add(RunHistory *h, int step, double tokens_per_s, int has_val, float val_loss) {
    if (step > 1) {
        h->tokens_per_s_sum += tokens_per_s;
        h->timed_steps++;
    }
    if (has_val) {
        h->has_val = 1;
        h->last_val_loss = val_loss;
        if (val_loss < h->best_val_loss) h->best_val_loss = val_loss;
    }
}

static RunHistory run_log_history(const char *dir) {
    RunHistory h = {0.0, 0.0, 0, 0, INFINITY, NAN};
    char path[1100];
    snprintf(path, sizeof path, "%s/log.jsonl", dir);
    if (!file_exists(path)) return h;
    char *text = read_whole_file(path, NULL);
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *rec = cJSON_Parse(line);
        const cJSON *step = cJSON_GetObjectItemCaseSensitive(rec, "step");
        const cJSON *tokens_per_s = cJSON_GetObjectItemCaseSensitive(rec, "tokens_per_s");
        const cJSON *time_s = cJSON_GetObjectItemCaseSensitive(rec, "time_s");
        const cJSON *val = cJSON_GetObjectItemCaseSensitive(rec, "val_loss");
        if (cJSON_IsNumber(time_s)) h.seconds = time_s->valuedouble;
        if (cJSON_IsNumber(step)) {
            history_add(&h, step->valueint, cJSON_IsNumber(tokens_per_s) ? tokens_per_s->valuedouble : 0.0,
                        cJSON_IsNumber(val), cJSON_IsNumber(val) ? (float)val->valuedouble : 0.0f);
        }
        cJSON_Delete(rec);
    }
    free(text);
    return h;
}

void run_log_open(RunLog *run, const char *dir, int max_steps, int resume_step) {
    memset(run, 0, sizeof *run);
    snprintf(run->dir, sizeof run->dir, "%s", dir);
    char path[1100];
    snprintf(path, sizeof path, "%s/samples.txt", dir);
    if (resume_step > 0) truncate_history(path, "samples", resume_step);
    snprintf(path, sizeof path, "%s/log.jsonl", dir);
    if (resume_step > 0) truncate_history(path, "log", resume_step);
    run->history = resume_step > 0 ? run_log_history(dir) : (RunHistory){0.0, 0.0, 0, 0, INFINITY, NAN};
    run->log = fopen(path, resume_step > 0 ? "a" : "w");
    if (!run->log) fatal("cannot open %s: %s", path, strerror(errno));
    run->max_steps = max_steps;
    run->interactive = isatty(STDOUT_FILENO);
    run->print_every = max_steps >= 20 ? max_steps / 20 : 1;
    run->start_time = wall_time_seconds();
    run->start_step = resume_step;
}

double run_log_seconds(const RunLog *run) {
    return run->history.seconds + (wall_time_seconds() - run->start_time);
}

static void format_duration(double seconds, char *buf, size_t len) {
    long s = (long)(seconds + 0.5);
    if (s >= 3600) snprintf(buf, len, "%ldh%02ldm", s / 3600, (s / 60) % 60);
    else snprintf(buf, len, "%ldm%02lds", s / 60, s % 60);
}

static void print_progress(RunLog *run, const StepRecord *rec) {
    int steps_done = rec->step - run->start_step;
    double elapsed = wall_time_seconds() - run->start_time;
    double eta = steps_done > 0 ? elapsed / steps_done * (run->max_steps - rec->step) : 0.0;
    char eta_text[32];
    format_duration(eta, eta_text, sizeof eta_text);
    char val_text[32] = "";
    if (rec->has_val) snprintf(val_text, sizeof val_text, " | val %.4f", rec->val_loss);
    printf("%sstep %*d/%d | loss %.4f%s | lr %.2e | norm %.3f | %.0f tok/s | %.1f ms | ETA %s%s",
           run->interactive ? "\r\033[K" : "", (int)snprintf(NULL, 0, "%d", run->max_steps), rec->step,
           run->max_steps, rec->loss, val_text, rec->lr, rec->grad_norm, rec->tokens_per_s, rec->ms, eta_text,
           run->interactive ? "" : "\n");
    if (run->interactive && (rec->has_val || rec->step == run->max_steps)) printf("\n");
    fflush(stdout);
}

// "key": value (null for NaN and infinities: JSON has none), after ", " unless it opens its object (*first).
static void write_field(FILE *f, int *first, const char *key, double value) {
    fprintf(f, "%s\"%s\": ", *first ? "" : ", ", key);
    if (!isfinite(value)) fprintf(f, "null");
    else fprintf(f, "%.9g", value);
    *first = 0;
}

// The fields of one set of update-quality sums (update_metrics.h).
static void write_update_quality(FILE *f, int first, const UpdateMetrics *metrics, const UpdateSums *sums) {
    UpdateQuality q = update_quality(metrics, sums);
    write_field(f, &first, "edq", q.edq);
    write_field(f, &first, "edq_rel", q.edq_rel);
    write_field(f, &first, "edq_rel_state", q.edq_rel_state);
    write_field(f, &first, "lost_frac", q.lost_frac);
    write_field(f, &first, "lost_frac_state", q.lost_frac_state);
    if (metrics->has_compensation) {
        write_field(f, &first, "comp_norm", q.comp_norm);
        write_field(f, &first, "comp_proj", q.comp_proj);
    }
    if (metrics->has_codes) write_field(f, &first, "flip_rate", q.flip_rate);
}

// The global fields, then "groups": {"embeddings": {...}, "block0": {...}, ..., "head": {...}}.
static void write_update_metrics(FILE *f, const UpdateMetrics *metrics) {
    write_update_quality(f, 0, metrics, &metrics->total);
    fprintf(f, ", \"groups\": {");
    for (int g = 0; g < metrics->num_groups; g++) {
        char name[32];
        update_group_name(metrics, g, name, sizeof name);
        fprintf(f, "%s\"%s\": {", g ? ", " : "", name);
        write_update_quality(f, 1, metrics, &metrics->groups[g]);
        fprintf(f, "}");
    }
    fprintf(f, "}");
}

void run_log_step(RunLog *run, const StepRecord *rec) {
    history_add(&run->history, rec->step, rec->tokens_per_s, rec->has_val, rec->val_loss);
    fprintf(run->log, "{\"step\": %d", rec->step);
    int first = 0;
    write_field(run->log, &first, "loss", rec->loss);
    write_field(run->log, &first, "lr", rec->lr);
    write_field(run->log, &first, "grad_norm", rec->grad_norm);
    fprintf(run->log, ", \"tokens_per_s\": %.1f, \"ms\": %.3f, \"time_s\": %.3f", rec->tokens_per_s, rec->ms,
            run_log_seconds(run));
    if (rec->has_val) write_field(run->log, &first, "val_loss", rec->val_loss);
    if (rec->has_sharpness) write_field(run->log, &first, "sharpness", rec->sharpness);
    if (rec->metrics) write_update_metrics(run->log, rec->metrics);
    fprintf(run->log, "}\n");
    if (fflush(run->log) != 0) fatal("cannot write %s/log.jsonl: %s", run->dir, strerror(errno));
    if (run->interactive || rec->has_val || rec->step % run->print_every == 0 || rec->step == run->max_steps ||
        rec->step == run->start_step + 1) {
        print_progress(run, rec);
    }
}

void run_log_eval(RunLog *run, const StepRecord *rec) {
    history_add(&run->history, rec->step, 0.0, 1, rec->val_loss);
    fprintf(run->log, "{\"step\": %d, \"val_loss\": %.9g", rec->step, rec->val_loss);
    if (rec->has_sharpness) fprintf(run->log, ", \"sharpness\": %.9g", rec->sharpness);
    fprintf(run->log, "}\n");
    if (fflush(run->log) != 0) fatal("cannot write %s/log.jsonl: %s", run->dir, strerror(errno));
    printf("step %d | val %.4f\n", rec->step, rec->val_loss);
    fflush(stdout);
}

void run_log_close(RunLog *run) {
    if (run->log && fclose(run->log) != 0) fatal("cannot write %s/log.jsonl: %s", run->dir, strerror(errno));
    run->log = NULL;
}

void run_log_sample(RunLog *run, int step, const char *text) {
    char path[1100];
    snprintf(path, sizeof path, "%s/samples.txt", run->dir);
    FILE *f = fopen(path, "a");
    if (!f) fatal("cannot open %s: %s", path, strerror(errno));
    fprintf(f, "--- step %d ---\n%s\n", step, text);
    if (fclose(f) != 0) fatal("cannot write %s: %s", path, strerror(errno));
    printf("--- sample at step %d ---\n%s\n---\n", step, text);
}

void run_log_summary(RunLog *run, const char *json) {
    char path[1100];
    snprintf(path, sizeof path, "%s/summary.json", run->dir);
    atomic_file_write_text(path, "summary", json);
}
