// `--formats`: the properties of number formats, derived from the same ExmyFormat the quantizers use.
#include "formats.h"

#include <ctype.h>
#include <stdio.h>

#include "util.h"

// Reads 1 or 2 decimal digits at *p, advancing it; -1 if there are none or more than two.
static int parse_small_number(const char **p) {
    int value = 0, digits = 0;
    while (isdigit((unsigned char)**p)) {
        value = value * 10 + (**p - '0');
        digits++;
        (*p)++;
    }
    return digits >= 1 && digits <= 2 ? value : -1;
}

int formats_parse(const char *name, ExmyFormat *out) {
    const char *p = name;
    if (tolower((unsigned char)*p) != 'e') return 0;
    p++;
    int exp_bits = parse_small_number(&p);
    if (tolower((unsigned char)*p) != 'm') return 0;
    p++;
    int man_bits = parse_small_number(&p);
    if (*p != '\0') return 0;
    if (exp_bits < 1 || exp_bits > 8 || man_bits < 0 || man_bits > 23) return 0;
    *out = exp_bits == 4 && man_bits == 3 ? exmy_e4m3() : exmy_format(exp_bits, man_bits);
    return 1;
}

static const char *layout_name(ExmyFormat f) {
    if (f.specials == EXMY_SPECIALS_FN) return "OCP FP8 E4M3";
    if (f.specials == EXMY_SPECIALS_NONE) return "all finite";
    if (f.exp_bits == 5 && f.man_bits == 2) return "OCP FP8 E5M2";
    if (f.exp_bits == 5 && f.man_bits == 10) return "fp16";
    if (f.exp_bits == 8 && f.man_bits == 7) return "bf16";
    if (f.exp_bits == 8 && f.man_bits == 23) return "fp32";
    return "IEEE-style";
}

static void print_format(const char *name, ExmyFormat f) {
    unsigned long long codes = 1ull << (1 + f.exp_bits + f.man_bits);
    unsigned long long nan_codes = 0, inf_codes = 0;
    if (f.specials == EXMY_SPECIALS_IEEE) {
        nan_codes = 2ull * ((1ull << f.man_bits) - 1);
        inf_codes = 2;
    } else if (f.specials == EXMY_SPECIALS_FN) {
        nan_codes = 2;
    }
    int emin = exmy_min_exponent(f);
    char min_subnormal[32];
    if (f.man_bits > 0) snprintf(min_subnormal, sizeof min_subnormal, "%.9g", pow2_f32(emin - f.man_bits));
    else snprintf(min_subnormal, sizeof min_subnormal, "none");
    printf("%-7s %-13s %4d %4d %16.9g %16.9g %16s %14.9g %4s %4s %12llu %12llu\n", name, layout_name(f),
           1 + f.exp_bits + f.man_bits, f.bias, f.max_finite, pow2_f32(emin), min_subnormal,
           pow2_f32(-f.man_bits), exmy_has_inf(f) ? "yes" : "no", exmy_has_nan(f) ? "yes" : "no", codes,
           codes - nan_codes - inf_codes);
}

void formats_print(int count, char **names) {
    static char *named_formats[] = {"e8m7", "e5m10", "e4m3", "e5m2"};
    if (count == 0) {
        count = 4;
        names = named_formats;
    }
    ExmyFormat f;
    for (int i = 0; i < count; i++) {  // every name is checked before anything is printed
        if (!formats_parse(names[i], &f))
            fatal("unknown format '%s': expected e4m3, e5m2, e5m10, e8m7 or any eXmY with 1 <= X <= 8 and "
                  "0 <= Y <= 23 (e.g. e3m4)", names[i]);
    }
    printf("%-7s %-13s %4s %4s %16s %16s %16s %14s %4s %4s %12s %12s\n", "format", "layout", "bits", "bias",
           "max finite", "min normal", "min subnormal", "epsilon", "inf", "NaN", "codes", "finite");
    for (int i = 0; i < count; i++) {
        formats_parse(names[i], &f);
        print_format(names[i], f);
    }
    printf("epsilon = 2^-Y, the spacing just above 1; codes = 2^(1+X+Y) bit patterns, 'finite' counts +0 and -0.\n"
           "Rounding: nearest-even, toward zero or stochastic; overflow saturates to max finite or goes to inf\n"
           "(NaN in e4m3, which has no inf). See docs/formats.md.\n");
}
