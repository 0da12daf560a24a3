// A run's identity: what its checkpoints must agree on with any run that resumes from them. The config keys
// that a resume may not change (config_identity_text), the number of ranks, a fingerprint of each train shard (name, token count,
// and a hash of its header and first tokens), and a hash of the config part.
#ifndef LP_RUN_IDENTITY_H
#define LP_RUN_IDENTITY_H

#include <stdint.h>

#include "config.h"
#include "data.h"

#ifdef __cplusplus
extern "C" {
#endif

// "key = value" lines, one per identity item (the config's, the number of ranks, the data's); the caller
// frees the text.
char *run_identity_text(const Config *cfg, const DataLoader *train, int ranks);
// The data lines of the identity alone (what each rank reads), the caller frees it.
char *data_identity_text(const DataLoader *train);
// fatal() naming the first key whose value differs between a checkpoint's identity (`saved`) and this run's
// (`current`), with both values. A key the checkpoint lacks (added to the program after it was written) is
// accepted at its value in `defaults` (the identity of config_before_new_keys: what runs did before the key
// existed) and refused at any other.
void run_identity_check(const char *checkpoint, const char *saved, const char *current, const char *defaults);

#ifdef __cplusplus
}
#endif

#endif
