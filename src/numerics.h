// The numerics core, header-only, host and device: one include for everything under src/numerics/.
#ifndef LP_NUMERICS_H
#define LP_NUMERICS_H

#include "numerics/common.h"
#include "numerics/bf16.h"
#include "numerics/rng.h"
#include "numerics/rounding.h"
#include "numerics/exmy.h"
#include "numerics/int_grid.h"
#include "numerics/stochastic_rounding.h"
#include "numerics/mcf.h"
#include "numerics/activation_quant.h"
#include "numerics/scaling.h"

#endif
