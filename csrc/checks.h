// Argument checks shared by the CPU and CUDA backends and the bindings: each throws
// std::invalid_argument (Python ValueError) naming the failed condition, so both backends
// reject the same bad input with the same message. Host code only.
#pragma once

#include <cstdint>

#include "layout.h"

namespace compexp {

// A mask set's structure: ptr starts at 0, ends at nnz and never decreases; every block id is
// in [0, n_blocks) and strictly increasing within a mask. `what` prefixes the message
// ("units: block id out of range"). Pass n_blocks = INT64_MAX when no index bounds the ids.
void check_mask_set(const MaskSetView& masks, int64_t nnz, int64_t n_blocks, const char* what);

// unit_of[i] in [0, n_units) for the n_formulas formulas of an extension_counts call.
void check_unit_of(const int64_t* unit_of, int64_t n_formulas, int64_t n_units);

// The materialisation requests of n_out outputs against an index of n_concepts concepts and
// n_formulas source formulas: a known operator code; a concept in range unless op is kCopy;
// a source in range unless op is kLeaf (the ignored argument is not checked).
void check_materialize_args(int64_t n_out, const int64_t* src, const int32_t* op,
                            const int32_t* concept, int32_t n_concepts, int64_t n_formulas);

}  // namespace compexp
