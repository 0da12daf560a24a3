// A run directory (output.dir) holds exactly one run's history. These functions decide whether a run may use
// it, hold a lock on it for the run's life, and keep its history linear when a run resumes from an older
// checkpoint (README, "Runs and resume").
#ifndef LP_RUN_DIR_H
#define LP_RUN_DIR_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    RUN_DIR_NEW,       // a new run: the directory must not hold another run's outputs (unless overwrite)
    RUN_DIR_CONTINUE,  // --resume of the run that the directory holds
} RunDirUse;

// Read-only checks at start, before anything is loaded or written: another live run holds the lock; a file
// where checkpoints/ should be; a new run into a directory that holds a run's outputs without overwrite.
void run_dir_check(const char *dir, RunDirUse use, int overwrite);

// Takes the directory for this process's life: creates it, locks it (a second live run is refused), checks
// it again under the lock, removes the old run's outputs when a new run overwrites them, removes temporary
// files left by a killed write, and creates checkpoints/.
void run_dir_claim(const char *dir, RunDirUse use, int overwrite);

// A resume from step `step` when newer checkpoints exist starts a branch: those checkpoints (every rank's)
// move to checkpoints/superseded/, and the caller truncates log.jsonl and samples.txt to `step`. Returns
// the number of checkpoint files moved.
int run_dir_supersede_after(const char *dir, int step);

// The step of a checkpoint file name of `rank` (step_NNNNNNNN.ckpt for rank 0, step_NNNNNNNN.rankR.ckpt for
// rank R > 0), or -1 when the name is not one.
int checkpoint_step_of(const char *path, int rank);

#ifdef __cplusplus
}
#endif

#endif
