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
} CliOptions;

// fatal() with a usage hint on an unknown flag or a missing value.
CliOptions cli_parse(int argc, char **argv);
void cli_print_help(void);

#ifdef __cplusplus
}
#endif

#endif
