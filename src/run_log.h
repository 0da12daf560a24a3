// What a run leaves in its output directory besides checkpoints: log.jsonl (one JSON object per optimizer
// step), the progress line on stdout, samples.txt and summary.json.
#ifndef LP_RUN_LOG_H
#define LP_RUN_LOG_H

#include <stdio.h>

#include "update_metrics.h"

typedef struct {
    int step;
    float loss, lr, grad_norm;
    double tokens_per_s, ms;
    int has_val;
    float val_loss;
    int has_sharpness;
    float sharpness;  // logit sharpness at eval (metrics.sharpness)
    const UpdateMetrics *metrics;  // update-quality sums on metric steps, else NULL
} StepRecord;

// What log.jsonl says about the run so far, so that summary.json after a resume covers the whole run.
typedef struct {
    double seconds;           // training wall time up to the last logged step
    double tokens_per_s_sum;  // over the logged steps after step 1
    int timed_steps;
    int has_val;
    float best_val_loss, last_val_loss;
} RunHistory;

typedef struct {
    FILE *log;           // log.jsonl, appended per step
    char dir[1024];
    int max_steps;
    int interactive;     // stdout is a terminal: redraw one progress line in place
    int print_every;     // otherwise print a progress line every this many steps
    double start_time;
    int start_step;      // first step of this process (after a resume)
    RunHistory history;  // the whole run so far: read back from log.jsonl on a resume, then each logged record
} RunLog;

double wall_time_seconds(void);
// Opens DIR/log.jsonl for appending. On a resume, the lines of log.jsonl and the samples of samples.txt with a
// step beyond resume_step are dropped first, and run->history is read from what remains; every record logged
// after adds to it.
void run_log_open(RunLog *run, const char *dir, int max_steps, int resume_step);
// The run's training time so far, earlier processes included.
double run_log_seconds(const RunLog *run);
void run_log_step(RunLog *run, const StepRecord *rec);
// An evaluation without a step (before the first): {"step": N, "val_loss": ...} and sharpness if measured.
void run_log_eval(RunLog *run, const StepRecord *rec);
void run_log_close(RunLog *run);
// Appends a sample to DIR/samples.txt and prints it.
void run_log_sample(RunLog *run, int step, const char *text);
// Writes DIR/summary.json atomically from a JSON text.
void run_log_summary(RunLog *run, const char *json);

#endif
