// The tiles of the fused (flash-style) causal attention, shared by the C reference (src/cpu/attention_tiled.c)
// and the CUDA kernels (kernels/flash_attention.cuh). The key tile is part of the numerics: the online softmax
// of the forward's first pass takes one step (a new running max, a rescaled running sum) per key tile, so both
// implementations must group keys alike. The query tile only groups rows into units of work.
#ifndef LP_ATTENTION_TILES_H
#define LP_ATTENTION_TILES_H

#define ATTENTION_TILE_Q 64  // query rows per unit of work
#define ATTENTION_TILE_K 64  // keys per online-softmax step

#endif
