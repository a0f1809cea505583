// Bilinear sampling shared by the CPU and CUDA kernels.
//
// A normalized location (x, y) of a level of size (H, W) samples pixel
// (x * W - 0.5, y * H - 0.5) with zero padding: exactly grid_sample with
// align_corners=False and padding_mode="zeros".
#pragma once

#include <c10/macros/Macros.h>
#include <cstdint>

namespace d2ext {

template <typename acc_t>
struct BilinearCorners {
  // Pixel index h * W + w inside the level of the corners (low, low),
  // (low, high), (high, low), (high, high) in (h, w) order; -1 outside the map.
  int64_t pixel[4];
  acc_t weight[4];
  // Fractional parts of the pixel coordinate.
  acc_t lh, lw;
};

// floor() of a value known to fit in int64; a truncation and a compare, where
// x86-64 without SSE4.1 would call libm's floor.
template <typename acc_t>
C10_HOST_DEVICE inline int64_t floor_to_int(acc_t v) {
  const int64_t t = static_cast<int64_t>(v);
  return t - (static_cast<acc_t>(t) > v);
}

// Whether a level of H x W pixels starting at row `start` lies within the S
// rows of value. The Python entry point validates the levels with clear errors;
// the kernels skip a level failing this check, so that no metadata (a direct
// torch.ops call, tensors changed in place behind the validation cache) can
// make them read or write outside value.
C10_HOST_DEVICE inline bool level_in_bounds(int64_t H, int64_t W, int64_t start, int64_t S) {
  return H > 0 && W > 0 && start >= 0 && start <= S && W <= (S - start) / H;
}

// The sample of a location with no corner inside the map: 0, or NaN when x or
// y is not finite (as grid_sample gives), so a diverging location is not hidden.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t outside_sample(acc_t x, acc_t y) {
  return (x - x) + (y - y);
}

// The weights of the corners (h_low, w_low), (h_low, w_low + 1), (h_low + 1,
// w_low) and (h_low + 1, w_low + 1) of a location lh, lw past corner 0. T is
// acc_t, or a vector of acc_t lanes (the CPU kernels' set-up).
template <typename acc_t, typename T>
C10_HOST_DEVICE inline void corner_weights(T lh, T lw, T weight[4]) {
  const T hh = acc_t(1) - lh;
  const T hw = acc_t(1) - lw;
  weight[0] = hh * hw;
  weight[1] = hh * lw;
  weight[2] = lh * hw;
  weight[3] = lh * lw;
}

// Given dot[c] = <grad_output, value at corner c> (0 outside the map) and the
// corner weights of lh, lw: the sample projected on grad_output (the gradient
// w.r.t. the attention weight) and the gradient w.r.t. the normalized location
// (x, y) on a W x H map. T as in corner_weights.
template <typename acc_t, typename T>
C10_HOST_DEVICE inline void bilinear_grad_terms(
    const T weight[4], T lh, T lw, const T dot[4], T H, T W, T& sampled, T& grad_x, T& grad_y) {
  sampled = weight[0] * dot[0] + weight[1] * dot[1] + weight[2] * dot[2] + weight[3] * dot[3];
  grad_x = ((acc_t(1) - lh) * (dot[1] - dot[0]) + lh * (dot[3] - dot[2])) * W;
  grad_y = ((acc_t(1) - lw) * (dot[2] - dot[0]) + lw * (dot[3] - dot[1])) * H;
}

// Fills `corners`; returns false when the location is so far outside the map
// (or not finite) that no corner is inside.
template <typename acc_t>
C10_HOST_DEVICE inline bool bilinear_corners(
    acc_t x, acc_t y, int64_t H, int64_t W, BilinearCorners<acc_t>& corners) {
  const acc_t h_im = y * static_cast<acc_t>(H) - acc_t(0.5);
  const acc_t w_im = x * static_cast<acc_t>(W) - acc_t(0.5);
  // Written so that NaN fails it too.
  if (!(h_im >= acc_t(-1) && h_im < static_cast<acc_t>(H) && w_im >= acc_t(-1) &&
        w_im < static_cast<acc_t>(W))) {
    return false;
  }
  const int64_t h_low = floor_to_int(h_im);
  const int64_t w_low = floor_to_int(w_im);
  const acc_t lh = h_im - static_cast<acc_t>(h_low);
  const acc_t lw = w_im - static_cast<acc_t>(w_low);
  // h_low < H and w_low < W hold in exact arithmetic; checked anyway, as
  // rounding of a huge H or W to acc_t could break them.
  const bool h_low_in = h_low >= 0 && h_low < H;
  const bool h_high_in = h_low + 1 < H;
  const bool w_low_in = w_low >= 0 && w_low < W;
  const bool w_high_in = w_low + 1 < W;
  corners.pixel[0] = (h_low_in && w_low_in) ? h_low * W + w_low : -1;
  corners.pixel[1] = (h_low_in && w_high_in) ? h_low * W + w_low + 1 : -1;
  corners.pixel[2] = (h_high_in && w_low_in) ? (h_low + 1) * W + w_low : -1;
  corners.pixel[3] = (h_high_in && w_high_in) ? (h_low + 1) * W + w_low + 1 : -1;
  corner_weights<acc_t>(lh, lw, corners.weight);
  corners.lh = lh;
  corners.lw = lw;
  return true;
}

// Given dot[c] = <grad_output, value at corner c> (0 outside the map), the
// gradient of <grad_output, sample> w.r.t. the attention weight (the sample
// itself projected on grad_output) and w.r.t. the normalized location (x, y).
template <typename acc_t>
struct BilinearGrad {
  acc_t sampled;
  acc_t grad_x;
  acc_t grad_y;
};

template <typename acc_t>
C10_HOST_DEVICE inline BilinearGrad<acc_t> bilinear_grad(
    const BilinearCorners<acc_t>& c, const acc_t dot[4], int64_t H, int64_t W) {
  BilinearGrad<acc_t> g;
  bilinear_grad_terms<acc_t>(
      c.weight, c.lh, c.lw, dot, static_cast<acc_t>(H), static_cast<acc_t>(W), g.sampled,
      g.grad_x, g.grad_y);
  return g;
}

} // namespace d2ext
