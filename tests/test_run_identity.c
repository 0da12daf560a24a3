// run_identity_check on hand-written identities: equal ones pass; any differing value is refused naming the
// key and both values; a key the checkpoint lacks (added to the program since) passes only at its default.
#include <stdlib.h>
#include <string.h>

#include "run_identity.h"
#include "testing.h"

static const char *DEFAULTS = "model.n_head = 4\nprecision.activation_quant = none\n";
static const char *SAVED = "model.n_head = 2\nranks = 1\nconfig hash = 00000000000000aa\n";

typedef struct {
    const char *current;
} Case;

static void check(void *arg) { run_identity_check("ckpt", SAVED, ((const Case *)arg)->current, DEFAULTS); }

static ChildResult run_case(const char *current) {
    Case c = {current};
    return run_in_child(check, &c);
}

// precision.attention_impl came with the fused attention, its default; earlier runs computed attention
// materialized, so a checkpoint lacking the key resumes with materialized and is refused under fused.
static const char *EARLIER_SAVED = "model.n_head = 2\nconfig hash = 00000000000000aa\n";
static char *earlier_identity;

static void check_against_earlier(void *current) { run_identity_check("ckpt", EARLIER_SAVED, current, earlier_identity); }

static void check_attention_impl_of_old_runs(void) {
    Config earlier;
    config_before_new_keys(&earlier);
    earlier_identity = config_identity_text(&earlier);
    CHECK(strstr(earlier_identity, "precision.attention_impl = materialized\n") != NULL, "%s", earlier_identity);
    char materialized[] = "model.n_head = 2\nprecision.attention_impl = materialized\nconfig hash = 00000000000000cc\n";
    char fused[] = "model.n_head = 2\nprecision.attention_impl = fused\nconfig hash = 00000000000000cc\n";
    ChildResult same = run_in_child(check_against_earlier, materialized);
    CHECK(same.exit_status == 0, "an old run with materialized attention refused: %s", same.message);
    ChildResult other = run_in_child(check_against_earlier, fused);
    CHECK(other.exit_status == 1 && strstr(other.message, "this run has precision.attention_impl = fused"),
          "an old run resumed with fused attention: %s", other.message);
    free(earlier_identity);
}

int main(void) {
    ChildResult same = run_case("model.n_head = 2\nranks = 1\nconfig hash = 00000000000000aa\n");
    CHECK(same.exit_status == 0, "equal identities refused: %s", same.message);

    ChildResult other = run_case("model.n_head = 4\nranks = 1\nconfig hash = 00000000000000aa\n");
    CHECK(other.exit_status == 1 && strstr(other.message, "model.n_head = 2, but this run has model.n_head = 4"),
          "a changed value: %s", other.message);

    ChildResult hash = run_case("model.n_head = 2\nranks = 1\nconfig hash = 00000000000000bb\n");
    CHECK(hash.exit_status == 1 && strstr(hash.message, "config hash = 00000000000000aa"), "hash: %s", hash.message);

    ChildResult dropped = run_case("model.n_head = 2\nconfig hash = 00000000000000aa\n");
    CHECK(dropped.exit_status == 1 && strstr(dropped.message, "ranks = 1, but this run has ranks = (absent)"),
          "a key this run lacks: %s", dropped.message);

    // A key added since the checkpoint: at its default the run is the same (the hash differs by construction).
    ChildResult added = run_case("model.n_head = 2\nranks = 1\nprecision.activation_quant = none\n"
                                 "config hash = 00000000000000cc\n");
    CHECK(added.exit_status == 0, "a new key at its default refused: %s", added.message);
    ChildResult added_set = run_case("model.n_head = 2\nranks = 1\nprecision.activation_quant = int8\n"
                                     "config hash = 00000000000000cc\n");
    CHECK(added_set.exit_status == 1 && strstr(added_set.message, "precision.activation_quant = (absent") &&
              strstr(added_set.message, "this run has precision.activation_quant = int8"),
          "a new key off its default: %s", added_set.message);
    check_attention_impl_of_old_runs();
    return test_summary("test_run_identity");
}
