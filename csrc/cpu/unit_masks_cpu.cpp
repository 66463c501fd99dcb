// Unit masks: Pillow-exact bilinear resize of activation maps, thresholding, packing (CPU).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "cpu_backend.h"
#include "pillow_coeffs.h"
#include "parallel.h"

namespace compexp {

AxisCoeffs::AxisCoeffs(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 1.0 * filterscale;
  ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  first.resize(out_size);
  count.resize(out_size);
  kk.assign(static_cast<size_t>(out_size) * ksize, 0.0);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double* k = &kk[static_cast<size_t>(xx) * ksize];
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      double t = (x + xmin - center + 0.5) * ss;
      if (t < 0.0) t = -t;
      const double w = t < 1.0 ? 1.0 - t : 0.0;
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x)
      if (ww != 0.0) k[x] /= ww;
    first[xx] = xmin;
    count[xx] = xmax;
  }
}

namespace cpu {

namespace {

// One separable pass along x (rows of `in` are `w` wide, `rows` of them), accumulated in
// double and stored as T (float32: Pillow's mode "F"; double: the same operations, unrounded).
template <class T>
void pass_x(const T* in, int rows, int w, const AxisCoeffs& cx, int W, T* out) {
  for (int y = 0; y < rows; ++y) {
    for (int xx = 0; xx < W; ++xx) {
      const double* k = &cx.kk[static_cast<size_t>(xx) * cx.ksize];
      const T* row = in + static_cast<size_t>(y) * w + cx.first[xx];
      double ss = 0.0;
      for (int x = 0; x < cx.count[xx]; ++x) ss += static_cast<double>(row[x]) * k[x];
      out[static_cast<size_t>(y) * W + xx] = static_cast<T>(ss);
    }
  }
}

// One separable pass along y (`cols` columns), accumulated in double, stored as T.
template <class T>
void pass_y(const T* in, int cols, const AxisCoeffs& cy, int H, T* out) {
  for (int yy = 0; yy < H; ++yy) {
    const double* k = &cy.kk[static_cast<size_t>(yy) * cy.ksize];
    for (int xx = 0; xx < cols; ++xx) {
      double ss = 0.0;
      for (int y = 0; y < cy.count[yy]; ++y)
        ss += static_cast<double>(in[static_cast<size_t>(cy.first[yy] + y) * cols + xx]) * k[y];
      out[static_cast<size_t>(yy) * cols + xx] = static_cast<T>(ss);
    }
  }
}

// Resizes one h x w float32 map to H x W as Pillow's Image.resize(BILINEAR) on mode "F":
// two passes accumulating in double, each stored as float32; a pass whose size does not change
// is skipped. Pillow >= 13 runs the vertical pass first when the height shrinks much more than
// the width (h - H > 2 (w - W)); otherwise, and always when upsampling, horizontal first.
// tmp must hold max(h * W, H * w) values. T = double: float64 maps, the same operations with
// double intermediates (Pillow has no float64 mode; this is its arithmetic without rounding).
template <class T>
void pil_resize(const T* in, int h, int w, const AxisCoeffs& cx, const AxisCoeffs& cy, int H,
                int W, T* tmp, T* out) {
  const bool horizontal = w != W, vertical = h != H;
  if (horizontal && vertical) {
    if (H < h && (h - H) > 2 * (w - W)) {
      pass_y(in, w, cy, H, tmp);
      pass_x(tmp, H, w, cx, W, out);
    } else {
      pass_x(in, h, w, cx, W, tmp);
      pass_y(tmp, W, cy, H, out);
    }
  } else if (horizontal) {
    pass_x(in, h, w, cx, W, out);
  } else if (vertical) {
    pass_y(in, w, cy, H, out);
  } else {
    std::memcpy(out, in, sizeof(T) * static_cast<size_t>(H) * W);
  }
}

// Appends the set cells of one sample to a unit's mask, block by block in cell order.
class MaskAppender {
 public:
  std::vector<int64_t> block;
  std::vector<uint64_t> words;
  void set(int64_t cell) {
    const int64_t b = cell / kBlockCells;
    if (block.empty() || block.back() != b) {
      block.push_back(b);
      words.resize(words.size() + kBlockWords, 0);
    }
    const int64_t in_block = cell - b * kBlockCells;
    words[words.size() - kBlockWords + in_block / 64] |= uint64_t{1} << (in_block % 64);
  }
};

// Sets the cells of the resized map that exceed t. Equal to resizing in full and comparing,
// but when the horizontal pass runs first (always when upsampling) the vertical pass is computed
// only where it can exceed t: an output is a convex combination of its inputs, so it exceeds t
// only if one of the horizontal pass's values it combines does. Computed cells use exactly
// pass_y's arithmetic.
template <class T>
void threshold_resized(const T* map, int h, int w, const AxisCoeffs& cx, const AxisCoeffs& cy,
                       int H, int W, double t, T* tmp, T* up, int64_t base,
                       MaskAppender& out) {
  const bool horizontal = w != W, vertical = h != H;
  const bool vertical_first = horizontal && vertical && H < h && (h - H) > 2 * (w - W);
  // The pruning below relies on a pass never exceeding the largest value it combines; that
  // holds after rounding to float32 (the double sum's error is far below half a float32 ulp),
  // not for double results (weights summing to 1 +- an ulp can lift a constant map above
  // itself): float64 maps are resized in full.
  if (!vertical || vertical_first || std::is_same<T, double>::value) {
    pil_resize(map, h, w, cx, cy, H, W, tmp, up);
    for (int64_t i = 0; i < static_cast<int64_t>(H) * W; ++i)
      if (static_cast<double>(up[i]) > t) out.set(base + i);
    return;
  }
  const T* rows = map;  // the horizontal pass's output, h rows of W
  if (horizontal) {
    pass_x(map, h, w, cx, W, tmp);
    rows = tmp;
  }
  // Column range [lo, hi) of values > t in each of the h rows (empty: lo >= hi).
  int lo[64], hi[64];
  std::vector<int> lo_big, hi_big;
  int* plo = lo;
  int* phi = hi;
  if (h > 64) {
    lo_big.resize(h);
    hi_big.resize(h);
    plo = lo_big.data();
    phi = hi_big.data();
  }
  for (int r = 0; r < h; ++r) {
    plo[r] = W;
    phi[r] = 0;
    const T* row = rows + static_cast<size_t>(r) * W;
    for (int x = 0; x < W; ++x) {
      if (static_cast<double>(row[x]) > t) {
        plo[r] = std::min(plo[r], x);
        phi[r] = x + 1;
      }
    }
  }
  for (int yy = 0; yy < H; ++yy) {
    const int r0 = cy.first[yy], nr = cy.count[yy];
    int a = W, b = 0;
    for (int r = r0; r < r0 + nr; ++r) {
      a = std::min(a, plo[r]);
      b = std::max(b, phi[r]);
    }
    const double* k = &cy.kk[static_cast<size_t>(yy) * cy.ksize];
    for (int xx = a; xx < b; ++xx) {
      double ss = 0.0;
      for (int y = 0; y < nr; ++y) ss += static_cast<double>(rows[static_cast<size_t>(r0 + y) * W + xx]) * k[y];
      if (static_cast<double>(static_cast<T>(ss)) > t) out.set(base + static_cast<int64_t>(yy) * W + xx);
    }
  }
}

MaskSet concat(std::vector<MaskAppender>& parts) {
  MaskSet out;
  for (auto& a : parts) {
    out.block.insert(out.block.end(), a.block.begin(), a.block.end());
    out.words.insert(out.words.end(), a.words.begin(), a.words.end());
    out.ptr.push_back(static_cast<int64_t>(out.block.size()));
  }
  return out;
}

template <class T>
MaskSet maps_to_masks(const T* acts, int64_t n_samples, int64_t n_units, int64_t h,
                      int64_t w, int64_t sample_offset, int64_t H, int64_t W,
                      const double* threshold, int n_threads) {
  COMPEXP_CHECK(h > 0 && w > 0 && H > 0 && W > 0, "map sizes must be positive");
  const AxisCoeffs cx(static_cast<int>(w), static_cast<int>(W));
  const AxisCoeffs cy(static_cast<int>(h), static_cast<int>(H));
  const int64_t hw = h * w, HW = H * W;
  std::vector<MaskAppender> parts(n_units);
  parallel_for(n_units, n_threads, 1, [&](int64_t u0, int64_t u1) {
    std::vector<T> tmp(static_cast<size_t>(std::max(h * W, H * w))), up(static_cast<size_t>(HW));
    for (int64_t u = u0; u < u1; ++u) {
      const double t = threshold[u];
      for (int64_t s = 0; s < n_samples; ++s) {
        const T* map = acts + (s * n_units + u) * hw;
        // A bilinear resize is a convex combination of its inputs, so after rounding to float32
        // it never exceeds the map's maximum: float32 maps that cannot cross the threshold are
        // skipped. (A double result can exceed it by an ulp: float64 maps are all resized.)
        const T mx = *std::max_element(map, map + hw);
        if (std::is_same<T, float>::value && !(static_cast<double>(mx) > t)) continue;
        const int64_t base = (sample_offset + s) * HW;
        threshold_resized(map, static_cast<int>(h), static_cast<int>(w), cx, cy, static_cast<int>(H),
                          static_cast<int>(W), t, tmp.data(), up.data(), base, parts[u]);
      }
    }
  });
  return concat(parts);
}

}  // namespace

MaskSet unit_masks_from_maps(const float* acts, int64_t n_samples, int64_t n_units, int64_t h,
                             int64_t w, int64_t sample_offset, int64_t H, int64_t W,
                             const double* threshold, int n_threads) {
  return maps_to_masks(acts, n_samples, n_units, h, w, sample_offset, H, W, threshold, n_threads);
}

MaskSet unit_masks_from_maps(const double* acts, int64_t n_samples, int64_t n_units, int64_t h,
                             int64_t w, int64_t sample_offset, int64_t H, int64_t W,
                             const double* threshold, int n_threads) {
  return maps_to_masks(acts, n_samples, n_units, h, w, sample_offset, H, W, threshold, n_threads);
}

MaskSet unit_masks_from_bool(const uint8_t* masks, int64_t n_samples, int64_t n_units, int64_t H,
                             int64_t W, int64_t sample_offset, int n_threads) {
  const int64_t HW = H * W;
  std::vector<MaskAppender> parts(n_units);
  parallel_for(n_units, n_threads, 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      for (int64_t s = 0; s < n_samples; ++s) {
        const uint8_t* m = masks + (s * n_units + u) * HW;
        const int64_t base = (sample_offset + s) * HW;
        for (int64_t i = 0; i < HW; ++i)
          if (m[i]) parts[u].set(base + i);
      }
    }
  });
  return concat(parts);
}

}  // namespace cpu
}  // namespace compexp
