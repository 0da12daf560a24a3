// Number formats by name, and the `--formats` view of their properties.
#ifndef LP_FORMATS_H
#define LP_FORMATS_H

#include "numerics/exmy.h"

#ifdef __cplusplus
extern "C" {
#endif

// Parses a format name, case-insensitively: e4m3 is OCP FP8 E4M3 (no infinities, max 448); any other eXmY
// with 1 <= X <= 8 and 0 <= Y <= 23 has the IEEE layout (e5m2 = OCP FP8 E5M2, e5m10 = fp16, e8m7 = bf16,
// e8m23 = fp32), except that X = 1 leaves no exponent code for inf/NaN, so all of its codes are finite.
// Returns 1 and fills *out on success, 0 for a name that is not a format.
int formats_parse(const char *name, ExmyFormat *out);

// Prints a table of each format's properties on stdout: max finite, min normal, min subnormal, machine
// epsilon, whether it has inf and NaN, and its code counts. count == 0 prints e8m7, e5m10, e4m3 and e5m2.
// An unknown name is a fatal error.
void formats_print(int count, char **names);

#ifdef __cplusplus
}
#endif

#endif
