// Format names and the `--formats` table: which names parse, what the table says about the named formats,
// and that an unknown name is a clear fatal error.
#include <string.h>
#include <unistd.h>

#include "formats.h"
#include "testing.h"

static void test_parse(void) {
    ExmyFormat f;
    CHECK(formats_parse("e4m3", &f) && f.specials == EXMY_SPECIALS_FN && f.max_finite == 448.0f, "e4m3 is OCP");
    CHECK(formats_parse("E5M2", &f) && f.exp_bits == 5 && f.man_bits == 2 && f.max_finite == 57344.0f, "E5M2");
    CHECK(formats_parse("e8m23", &f) && f.max_finite == 3.40282347e38f, "e8m23 is fp32");
    CHECK(formats_parse("e5m10", &f) && f.max_finite == 65504.0f, "e5m10 is fp16");
    CHECK(formats_parse("e1m0", &f) && f.specials == EXMY_SPECIALS_NONE && f.max_finite == 2.0f, "e1m0");
    CHECK(formats_parse("e2m1", &f) && f.max_finite == 3.0f && exmy_has_inf(f), "e2m1 is IEEE-style");
    const char *bad[] = {"", "e", "e4", "m3", "e0m3", "e9m1", "e4m24", "e4m3x", "fp8", "e4m-1", "e004m3", "e4m 3"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) CHECK(!formats_parse(bad[i], &f), "'%s' parsed", bad[i]);
}

static void print_to_stderr(void *arg) {
    char **names = (char **)arg;
    dup2(STDERR_FILENO, STDOUT_FILENO);
    int count = 0;
    while (names && names[count]) count++;
    formats_print(count, names);
    fflush(stdout);
}

static void test_print(void) {
    ChildResult named = run_in_child(print_to_stderr, NULL);
    CHECK(named.exit_status == 0, "formats_print(0) exit %d", named.exit_status);
    const char *expected[] = {"e8m7", "e5m10", "e4m3", "e5m2", "448", "57344", "65504", "3.38953139e+38",
                              "0.001953125", "1.52587891e-05", "OCP FP8 E4M3", "bf16", "fp16", "65536"};
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++)
        CHECK(strstr(named.message, expected[i]) != NULL, "table lacks '%s':\n%s", expected[i], named.message);
    char *names[] = {"e3m4", "E1M0", NULL};
    ChildResult chosen = run_in_child(print_to_stderr, names);
    CHECK(chosen.exit_status == 0 && strstr(chosen.message, "e3m4") && strstr(chosen.message, "E1M0") &&
              !strstr(chosen.message, "e5m2 "),
          "named formats only:\n%s", chosen.message);
    char *unknown[] = {"e4m3", "e9m2", NULL};
    ChildResult failed = run_in_child(print_to_stderr, unknown);
    CHECK(failed.exit_status == 1, "unknown name exit %d", failed.exit_status);
    CHECK(strstr(failed.message, "unknown format 'e9m2'") != NULL, "message: %s", failed.message);
    CHECK(strstr(failed.message, "max finite") == NULL, "a table was printed before the error: %s", failed.message);
}

int main(void) {
    test_parse();
    test_print();
    return test_summary("test_numerics_formats");
}
