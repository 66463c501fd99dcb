// Pillow's bilinear resampling coefficients, shared by the CPU resize (csrc/cpu/unit_masks_cpu.cpp)
// and the CUDA one (csrc/cuda/unit_masks.cu, which uploads them): one definition, so both
// weight the same inputs with the same doubles. Host code only.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

namespace compexp {

// Pillow's resampling coefficients for one axis (libImaging/Resample.c, precompute_coeffs,
// bilinear filter, support 1): output i reads inputs first[i] .. first[i]+count[i]-1 with
// weights kk[i*ksize ..]. Reproduced operation by operation so results match bit for bit.
struct AxisCoeffs {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<double> kk;
  // Defined in csrc/cpu/unit_masks_cpu.cpp, compiled once without FMA contraction, so the CUDA
  // host code that uploads the coefficients gets the CPU's doubles.
  AxisCoeffs(int in_size, int out_size);
};

}  // namespace compexp
