// Command-line options of train_gpt (DESIGN.md, "The user's interface").
#ifndef LP_CLI_H
#define LP_CLI_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { DEVICE_AUTO, DEVICE_CPU, DEVICE_CUDA } DeviceChoice;

#define CLI_MAX_SETS 64

typedef struct {
    const char *config;               // --config FILE (NULL if absent)
    const char *sets[CLI_MAX_SETS];   // --set SECTION.KEY=VALUE, in order
    int num_sets;
    const char *resume;               // --resume DIR|FILE
    DeviceChoice device;
    int dry_run;
    int print_config;
    int help;
    int formats;                      // --formats: the remaining arguments are format names
    char **format_names;
    int num_format_names;
    // --generate RUN_DIR|MODEL_BIN and its options (generate.h); NULL / defaults when absent.
    const char *generate;
    const char *prompt;               // --prompt TEXT
    const char *prompt_ids;           // --prompt-ids 1,2,3
    int tokens;                       // --tokens N (default 64)
    float temperature;                // --temperature T (default 1; 0 = greedy)
    int top_k;                        // --top-k K (default 0 = off)
    const char *seed;                 // --seed S (NULL: the run's training.seed)
} CliOptions;

// fatal() with a usage hint on an unknown flag or a missing value.
CliOptions cli_parse(int argc, char **argv);
void cli_print_help(void);

#ifdef __cplusplus
}
#endif

#endif
