#include "cli.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

void cli_print_help(void) {
    printf(
        "usage: train_gpt --config FILE [--set SECTION.KEY=VALUE ...] [--resume DIR] [--device auto|cpu|cuda]\n"
        "                 [--dry-run] [--print-config] [--formats [NAME ...]] [--help]\n"
        "       train_gpt --generate RUN_DIR|MODEL_BIN [--prompt TEXT | --prompt-ids 1,2,3] [--tokens N]\n"
        "                 [--temperature T] [--top-k K] [--seed S] [--device auto|cpu|cuda] [--set S.K=V ...]\n"
        "\n"
        "Trains a GPT-2-style model under a precision policy, as the JSON config says, or generates text with a\n"
        "trained one.\n"
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
        "                     plan, then exit without training; with --device cuda also the step model's\n"
        "                     FLOPs, traffic and time per op group, at an H100 SXM's peaks unless\n"
        "                     LPGPT_PEAK_BF16_FLOPS, LPGPT_PEAK_TF32_FLOPS, LPGPT_PEAK_FP32_FLOPS (FLOP/s)\n"
        "                     or LPGPT_BANDWIDTH (bytes/s) say otherwise\n"
        "  --print-config     print the resolved config as JSON and exit\n"
        "  --formats [NAME]   print the numeric formats' properties (e4m3, e5m2, any eXmY) and exit\n"
        "  --help             this text\n"
        "\n"
        "  --generate R       print a prompt and its continuation by the model of run directory R (its model.bin,\n"
        "                     else its newest checkpoint; R/config.json gives the policy and data.tokenizer),\n"
        "                     or of an llm.c model file (config.json beside it, if any, or --config)\n"
        "  --prompt TEXT      the prompt, after an end-of-text token (byte-level tokenizers only; default: none)\n"
        "  --prompt-ids IDS   the prompt as token ids, e.g. for GPT-2 BPE runs:\n"
        "                     --prompt-ids $(python3 scripts/encode_prompt.py --tokenizer gpt2 \"TEXT\")\n"
        "  --tokens N         tokens to generate (default 64); beyond the context (model.block_size) the\n"
        "                     model sees the newest half of the context and continues\n"
        "  --temperature T    divide the logits by T (default 1; 0 = always the most likely token)\n"
        "  --top-k K          draw among the K most likely tokens (default 0 = all)\n"
        "  --seed S           the draws' seed (default: the run's training.seed); the same seed, the same text\n"
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

// A whole number in [min, max], or fatal() naming the flag.
static long parse_whole(const char *flag, const char *text, long min, long max) {
    char *end;
    long value = strtol(text, &end, 10);
    if (end == text || *end != '\0' || value < min || value > max) {
        fatal("%s %s: expected a whole number from %ld to %ld", flag, text, min, max);
    }
    return value;
}

static float parse_temperature(const char *text) {
    char *end;
    float value = strtof(text, &end);
    if (end == text || *end != '\0' || !(value >= 0.0f) || isinf(value)) {
        fatal("--temperature %s: expected a number >= 0 (0 = the most likely token)", text);
    }
    return value;
}

static DeviceChoice parse_device(const char *name) {
    if (strcmp(name, "auto") == 0) return DEVICE_AUTO;
    if (strcmp(name, "cpu") == 0) return DEVICE_CPU;
    if (strcmp(name, "cuda") == 0) return DEVICE_CUDA;
    fatal("--device %s: expected auto, cpu or cuda", name);
}

// The generation flags go with --generate only, and --generate with no training flag.
static void check_generate_flags(const CliOptions *opt) {
    const char *stray = opt->prompt ? "--prompt" : opt->prompt_ids ? "--prompt-ids" : opt->seed ? "--seed" : NULL;
    if (!opt->generate && stray) fatal("%s goes with --generate RUN_DIR|MODEL_BIN (see --help)", stray);
    if (!opt->generate) return;
    if (opt->resume || opt->dry_run || opt->print_config) {
        const char *other = opt->resume ? "--resume" : opt->dry_run ? "--dry-run" : "--print-config";
        fatal("--generate does not go with %s", other);
    }
    if (opt->prompt && opt->prompt_ids) fatal("--prompt and --prompt-ids: give one of them");
}

CliOptions cli_parse(int argc, char **argv) {
    CliOptions opt;
    memset(&opt, 0, sizeof opt);
    opt.device = DEVICE_AUTO;
    opt.tokens = 64;
    opt.temperature = 1.0f;
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
        } else if (strcmp(arg, "--generate") == 0) {
            opt.generate = flag_value(argc, argv, &i);
        } else if (strcmp(arg, "--prompt") == 0) {
            opt.prompt = flag_value(argc, argv, &i);
        } else if (strcmp(arg, "--prompt-ids") == 0) {
            opt.prompt_ids = flag_value(argc, argv, &i);
        } else if (strcmp(arg, "--tokens") == 0) {
            opt.tokens = (int)parse_whole(arg, flag_value(argc, argv, &i), 0, 1 << 24);
        } else if (strcmp(arg, "--temperature") == 0) {
            opt.temperature = parse_temperature(flag_value(argc, argv, &i));
        } else if (strcmp(arg, "--top-k") == 0) {
            opt.top_k = (int)parse_whole(arg, flag_value(argc, argv, &i), 0, 65536);
        } else if (strcmp(arg, "--seed") == 0) {
            opt.seed = flag_value(argc, argv, &i);
            parse_whole(arg, opt.seed, 0, LONG_MAX);
        } else if (strcmp(arg, "--formats") == 0) {
            opt.formats = 1;
            opt.format_names = argv + i + 1;
            opt.num_format_names = argc - i - 1;
            break;
        } else {
            fatal("unknown option \"%s\" (see --help)", arg);
        }
    }
    check_generate_flags(&opt);
    return opt;
}
