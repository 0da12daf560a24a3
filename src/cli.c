#include "cli.h"

#include <stdio.h>
#include <string.h>

#include "util.h"

void cli_print_help(void) {
    printf(
        "usage: train_gpt --config FILE [--set SECTION.KEY=VALUE ...] [--resume DIR] [--device auto|cpu|cuda]\n"
        "                 [--dry-run] [--print-config] [--formats [NAME ...]] [--help]\n"
        "\n"
        "Trains a GPT-2-style model under a precision policy, as the JSON config says.\n"
        "\n"
        "  --config FILE      the run's JSON config; a name that is not a file is looked up in configs/\n"
        "                     (so --config tiny_cpu.json works from the repository root)\n"
        "  --set S.K=V        override one config key, e.g. --set training.lr=3e-4 (repeatable)\n"
        "  --resume DIR       continue the run in DIR from its newest complete checkpoint, or from a\n"
        "                     checkpoint file (an older one starts a branch); without --config,\n"
        "                     DIR/config.json is the config. Only the same run may resume (README,\n"
        "                     \"Runs and resume\", lists the keys that may change)\n"
        "  --device D         auto (default: the GPU if there is one, else the CPU), cpu, or cuda\n"
        "  --dry-run          print the model, the policy's storage, bytes per parameter and the memory\n"
        "                     plan, then exit without training\n"
        "  --print-config     print the resolved config as JSON and exit\n"
        "  --formats [NAME]   print the numeric formats' properties (e4m3, e5m2, any eXmY) and exit\n"
        "  --help             this text\n"
        "\n"
        "Config sections: model, data, training, precision, metrics, output (see README.md).\n"
        "Outputs in output.dir: config.json, log.jsonl, samples.txt, checkpoints/, model.bin, summary.json.\n"
        "A new run refuses a directory that holds a run (--set output.overwrite=1 deletes it first).\n"
        "Exit status: 0 done, 1 error, 3 diverged, 130/143 interrupted by SIGINT/SIGTERM (checkpoint saved).\n");
}

static const char *flag_value(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) fatal("%s needs a value (see --help)", argv[*i]);
    return argv[++*i];
}

static DeviceChoice parse_device(const char *name) {
    if (strcmp(name, "auto") == 0) return DEVICE_AUTO;
    if (strcmp(name, "cpu") == 0) return DEVICE_CPU;
    if (strcmp(name, "cuda") == 0) return DEVICE_CUDA;
    fatal("--device %s: expected auto, cpu or cuda", name);
}

CliOptions cli_parse(int argc, char **argv) {
    CliOptions opt;
    memset(&opt, 0, sizeof opt);
    opt.device = DEVICE_AUTO;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--config") == 0) {
            opt.config = flag_value(argc, argv, &i);
        } else if (strcmp(arg, "--set") == 0) {
            if (opt.num_sets == CLI_MAX_SETS) fatal("too many --set options (at most %d)", CLI_MAX_SETS);
            opt.sets[opt.num_sets++] = flag_value(argc, argv, &i);
        } else if (strcmp(arg, "--resume") == 0) {
            opt.resume = flag_value(argc, argv, &i);
        } else if (strcmp(arg, "--device") == 0) {
            opt.device = parse_device(flag_value(argc, argv, &i));
        } else if (strcmp(arg, "--dry-run") == 0) {
            opt.dry_run = 1;
        } else if (strcmp(arg, "--print-config") == 0) {
            opt.print_config = 1;
        } else if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            opt.help = 1;
        } else if (strcmp(arg, "--formats") == 0) {
            opt.formats = 1;
            opt.format_names = argv + i + 1;
            opt.num_format_names = argc - i - 1;
            break;
        } else {
            fatal("unknown option \"%s\" (see --help)", arg);
        }
    }
    return opt;
}
