// The CPU loops of multi-scale deformable attention, compiled once per
// instruction set: ms_deform_attn_cpu_<isa>.cpp includes ms_deform_attn_cpu.h
// (every header needed here), defines D2EXT_CPU_ISA (the namespace) and
// D2EXT_CPU_TARGET (the compiler's target string; none for the baseline build)
// and then includes this file, which therefore includes nothing and has no
// include guard.
//
// Forward parallelizes over (batch, query); backward over (batch, head), so
// that every thread owns a disjoint slice of grad_value and the result is
// deterministic without atomics.
#ifndef D2EXT_CPU_ISA
#error "define D2EXT_CPU_ISA, the namespace of the instruction set, before including this file"
#endif

#define D2EXT_PRAGMA(x) _Pragma(#x)
#ifdef D2EXT_CPU_TARGET
#if defined(__clang__)
#define D2EXT_TARGET_PUSH(t) D2EXT_PRAGMA(clang attribute push(__attribute__((target(t))), apply_to = function))
D2EXT_TARGET_PUSH(D2EXT_CPU_TARGET)
#else
#define D2EXT_TARGET_PUSH(t) D2EXT_PRAGMA(GCC target(t))
#pragma GCC push_options
D2EXT_TARGET_PUSH(D2EXT_CPU_TARGET)
#endif
#endif

// The vectors below never cross a function boundary that another build could
// call, so GCC's note on their calling convention does not apply.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace d2ext {
namespace cpu {
namespace D2EXT_CPU_ISA {
namespace {

// The channel loops take the D channels in blocks of a width fixed at compile
// time, each block held in vectors of GCC and Clang's vector extensions, as
// wide as the target's registers (D2EXT_CPU_VECTOR_BYTES): D = 32 float32 is one
// block, two 512-bit registers with AVX-512 (four with AVX2), kept across all
// the samples of a (query, head). Blocks of 32, then one each of 16, 8, 4, 2 and 1
// as needed, cover any D.
constexpr int64_t kMaxBlock = 32;
#ifndef D2EXT_CPU_VECTOR_BYTES
#define D2EXT_CPU_VECTOR_BYTES 16
#endif

#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define D2EXT_HAS_SHUFFLEVECTOR 1
#endif
#endif
#ifndef D2EXT_HAS_SHUFFLEVECTOR
#define D2EXT_HAS_SHUFFLEVECTOR 0
#endif

// The lanes of one vector of a block of W channels.
template <typename acc_t, int64_t W>
constexpr int64_t kLanes = std::min<int64_t>(W, D2EXT_CPU_VECTOR_BYTES / sizeof(acc_t));

template <typename T, int64_t N>
struct VecOf {
  typedef T type __attribute__((vector_size(N * sizeof(T))));
};
template <typename T, int64_t N>
using Vec = typename VecOf<T, N>::type;

// N channels from p, converted to acc_t.
template <typename acc_t, int64_t N, typename scalar_t>
inline Vec<acc_t, N> load(const scalar_t* p) {
  Vec<acc_t, N> v;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::memcpy(&v, p, sizeof(v));
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<acc_t, float>) {
    // bfloat16 is the top half of a float32
    Vec<uint16_t, N> bits;
    std::memcpy(&bits, p, sizeof(bits));
    const Vec<uint32_t, N> wide = __builtin_convertvector(bits, Vec<uint32_t, N>) << 16;
    std::memcpy(&v, &wide, sizeof(v));
  } else {
    for (int64_t k = 0; k < N; ++k) {
      v[k] = static_cast<acc_t>(p[k]);
    }
  }
  return v;
}

template <typename acc_t, int64_t N>
inline void store(acc_t* p, const Vec<acc_t, N>& v) {
  std::memcpy(p, &v, sizeof(v));
}

// The bits of bfloat16 values, rounded from float32 as c10::BFloat16 does (to
// nearest even; NaN to c10's quiet NaN), in the low half of each lane.
template <int64_t N>
inline void bfloat16_bits(const Vec<float, N>& v, Vec<uint32_t, N>& out) {
  Vec<uint32_t, N> bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const Vec<uint32_t, N> rounded = (bits + (((bits >> 16) & 1u) + 0x7FFFu)) >> 16;
  const Vec<uint32_t, N> nan = (Vec<uint32_t, N>)(v != v);
  out = (nan & 0x7FC0u) | (~nan & rounded);
}

// v, converted from acc_t, into N channels at p.
template <typename scalar_t, typename acc_t, int64_t N>
inline void store_as(scalar_t* p, const Vec<acc_t, N>& v) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::memcpy(p, &v, sizeof(v));
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<acc_t, float>) {
    Vec<uint32_t, N> bits;
    bfloat16_bits<N>(v, bits);
    const Vec<uint16_t, N> out = __builtin_convertvector(bits, Vec<uint16_t, N>);
    std::memcpy(p, &out, sizeof(out));
  } else {
    for (int64_t k = 0; k < N; ++k) {
      p[k] = static_cast<scalar_t>(v[k]);
    }
  }
}

// A block of W channels of a row as K vectors of L acc_t lanes, for the
// forward. bfloat16 rows are read as 32-bit words, each split into its even
// channel (the word shifted up) and its odd one (the word masked): an
// instruction per vector, where widening takes two. The vectors then hold
// channels d0, d0 + 2, ... and d0 + 1, d0 + 3, ... in turn, which `write` puts
// back in order.
template <typename scalar_t, typename acc_t, int64_t W>
struct RowBlock {
  static constexpr bool kSplit = std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<acc_t, float> &&
      W >= 2 && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;
  static constexpr int64_t L = kLanes<acc_t, kSplit ? W / 2 : W>;
  static constexpr int64_t K = W / L;
  using V = Vec<acc_t, L>;

  static void read(const scalar_t* p, V (&v)[K]) {
    if constexpr (kSplit) {
      for (int64_t k = 0; k < K; k += 2) {
        Vec<uint32_t, L> words;
        std::memcpy(&words, p + k * L, sizeof(words));
        const Vec<uint32_t, L> even = words << 16, odd = words & 0xFFFF0000u;
        std::memcpy(&v[k], &even, sizeof(even));
        std::memcpy(&v[k + 1], &odd, sizeof(odd));
      }
    } else {
      for (int64_t k = 0; k < K; ++k) {
        v[k] = load<acc_t, L>(p + k * L);
      }
    }
  }

  static void write(scalar_t* p, const V (&v)[K]) {
    if constexpr (kSplit) {
      for (int64_t k = 0; k < K; k += 2) {
        Vec<uint32_t, L> even, odd;
        bfloat16_bits<L>(v[k], even);
        bfloat16_bits<L>(v[k + 1], odd);
        const Vec<uint32_t, L> words = even | (odd << 16);
        std::memcpy(p + k * L, &words, sizeof(words));
      }
    } else {
      for (int64_t k = 0; k < K; ++k) {
        store_as<scalar_t, acc_t, L>(p + k * L, v[k]);
      }
    }
  }
};

// The sum of v's lanes, halving the vector at each step.
template <typename acc_t, int64_t N>
inline acc_t reduce_add(const Vec<acc_t, N>& v) {
  if constexpr (N == 1) {
    return v[0];
  } else {
    Vec<acc_t, N / 2> lo, hi;
#if D2EXT_HAS_SHUFFLEVECTOR
    [&]<size_t... I>(std::index_sequence<I...>) {
      lo = __builtin_shufflevector(v, v, I...);
      hi = __builtin_shufflevector(v, v, (I + N / 2)...);
    }(std::make_index_sequence<N / 2>{});
#else
    std::memcpy(&lo, &v, sizeof(lo));
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
#endif
    return reduce_add<acc_t, N / 2>(lo + hi);
  }
}

// Calls fn(std::integral_constant<int64_t, width>{}, first channel) per block.
template <int64_t W = kMaxBlock, typename Fn>
inline void for_each_block(int64_t d, int64_t D, const Fn& fn) {
  for (; d + W <= D; d += W) {
    fn(std::integral_constant<int64_t, W>{}, d);
  }
  if constexpr (W > 1) {
    for_each_block<W / 2>(d, D, fn);
  }
}

// The bilinear set-up (forward and backward) takes the samples of a query in
// vectors of kSetupLanes samples, as wide as the target's registers, and
// their corner addresses kAddressLanes at a time (GCC computes a vector wider
// than the registers lane by lane in places).
template <typename acc_t>
constexpr int64_t kSetupLanes = D2EXT_CPU_VECTOR_BYTES / sizeof(acc_t);
template <typename acc_t>
constexpr int64_t kAddressLanes = std::min<int64_t>(kSetupLanes<acc_t>, D2EXT_CPU_VECTOR_BYTES / sizeof(intptr_t));

constexpr int64_t round_up(int64_t n, int64_t multiple) {
  return (n + multiple - 1) / multiple * multiple;
}

// What the set-up needs of the level of each sample slot (m, l, p) of a query,
// the same for every query; padded by whole vectors, so that the set-up of any
// run of slots reads whole vectors (the padding lanes are computed and never
// used).
template <typename acc_t, typename index_t>
struct SlotLevels {
  std::vector<acc_t> height, width; // H and W
  std::vector<index_t> height_px, width_px; // the same, as integers
  std::vector<intptr_t> first_row; // bytes from an image's value to pixel 0 of the level, head m
  std::vector<intptr_t> next_line; // bytes from a pixel to the one below it
  intptr_t next_pixel; // bytes from a pixel to the next one
};

template <typename scalar_t, typename acc_t, typename index_t>
SlotLevels<acc_t, index_t> slot_levels(
    const Sizes& s,
    const int64_t* spatial_shapes,
    const int64_t* level_start_index) {
  const int64_t samples = s.M * s.L * s.P;
  const int64_t padded = round_up(samples, kSetupLanes<acc_t>) + kSetupLanes<acc_t>;
  const intptr_t pixel_bytes = s.M * s.D * sizeof(scalar_t);
  SlotLevels<acc_t, index_t> levels{
      std::vector<acc_t>(padded), std::vector<acc_t>(padded), std::vector<index_t>(padded),
      std::vector<index_t>(padded), std::vector<intptr_t>(padded), std::vector<intptr_t>(padded), pixel_bytes};
  for (int64_t slot = 0; slot < samples; ++slot) {
    const int64_t m = slot / (s.L * s.P), l = slot / s.P % s.L;
    const int64_t H = spatial_shapes[2 * l], W = spatial_shapes[2 * l + 1];
    levels.height[slot] = static_cast<acc_t>(H);
    levels.width[slot] = static_cast<acc_t>(W);
    levels.height_px[slot] = static_cast<index_t>(H);
    levels.width_px[slot] = static_cast<index_t>(W);
    levels.first_row[slot] = level_start_index[l] * pixel_bytes + m * s.D * sizeof(scalar_t);
    levels.next_line[slot] = W * pixel_bytes;
  }
  return levels;
}

// The corner rows of a query's samples, corner by corner: corner c of sample i
// is the row at address[c * stride + i] with weight[c * stride + i] (bilinear
// times attention). A corner outside the map is a row of zeros with weight 0.
template <typename acc_t>
struct QueryRows {
  int64_t stride;
  std::vector<intptr_t> address;
  std::vector<acc_t> weight;

  explicit QueryRows(int64_t samples)
      : stride(round_up(samples, kSetupLanes<acc_t>)), address(4 * stride), weight(4 * stride) {}
};

// The backward's set-up of a query's samples: the forward's rows and weights,
// the rows of grad_value that take their gradients (grad_address, laid out as
// address; a scratch row for a corner outside the map), and what the location
// gradient needs once the channel loops have summed the dot products.
template <typename scalar_t, typename acc_t, typename index_t>
struct BackwardRows : QueryRows<acc_t> {
  // grad_value (acc_t) has value's layout: a row's bytes from the image scale by this
  static_assert(sizeof(acc_t) % sizeof(scalar_t) == 0, "grad_value's elements must be a multiple of value's");
  static constexpr intptr_t kGradScale = sizeof(acc_t) / sizeof(scalar_t);
  std::vector<intptr_t> grad_address;
  std::vector<acc_t> lh, lw; // the fractional parts of the pixel coordinate
  std::vector<acc_t> outside; // outside_sample(x, y)
  std::vector<index_t> valid; // -1 where the location has a corner inside the map, else 0

  explicit BackwardRows(int64_t samples)
      : QueryRows<acc_t>(samples),
        grad_address(4 * this->stride),
        lh(this->stride),
        lw(this->stride),
        outside(this->stride),
        valid(this->stride) {}
};

// The rows a query's corners point at.
struct RowBases {
  intptr_t value; // an image's value
  intptr_t zeros; // a row of zeros, for a corner outside the map
  intptr_t grad; // the image's grad_value (backward only)
  intptr_t scratch; // a row for the gradients of corners outside the map (backward only)
};

// Lanes [0, count) from p, the others 0: the last vector of a query reads no
// further than its samples.
template <typename T, int64_t V>
inline Vec<T, V> load_lanes(const T* p, int64_t count) {
  Vec<T, V> v = {};
  if (count >= V) {
    std::memcpy(&v, p, sizeof(v));
  } else if (count > 0) {
    std::memcpy(&v, p, count * sizeof(T));
  }
  return v;
}

// Lanes [0, count) of v into p.
template <typename T, int64_t V>
inline void store_lanes(T* p, const Vec<T, V>& v, int64_t count) {
  if (count >= V) {
    std::memcpy(p, &v, sizeof(v));
  } else if (count > 0) {
    std::memcpy(p, &v, count * sizeof(T));
  }
}

// x and y of the (x, y) pairs at p (lanes past count are 0).
template <typename acc_t, int64_t V>
inline void load_pairs(const acc_t* p, int64_t count, Vec<acc_t, V>& x, Vec<acc_t, V>& y) {
  const Vec<acc_t, V> lo = load_lanes<acc_t, V>(p, 2 * count);
  const Vec<acc_t, V> hi = count > V / 2 ? load_lanes<acc_t, V>(p + V, 2 * count - V) : Vec<acc_t, V>{};
#if D2EXT_HAS_SHUFFLEVECTOR
  [&]<size_t... I>(std::index_sequence<I...>) {
    x = __builtin_shufflevector(lo, hi, (2 * I)...);
    y = __builtin_shufflevector(lo, hi, (2 * I + 1)...);
  }(std::make_index_sequence<V>{});
#else
  for (int64_t k = 0; k < V; ++k) {
    x[k] = k < V / 2 ? lo[2 * k] : hi[2 * k - V];
    y[k] = k < V / 2 ? lo[2 * k + 1] : hi[2 * k + 1 - V];
  }
#endif
}

// The first `count` (x, y) pairs of lanes x and y into p: load_pairs reversed.
template <typename acc_t, int64_t V>
inline void store_pairs(acc_t* p, int64_t count, const Vec<acc_t, V>& x, const Vec<acc_t, V>& y) {
  Vec<acc_t, V> lo, hi;
#if D2EXT_HAS_SHUFFLEVECTOR
  [&]<size_t... I>(std::index_sequence<I...>) {
    lo = __builtin_shufflevector(x, y, (I % 2 * V + I / 2)...);
    hi = __builtin_shufflevector(x, y, (I % 2 * V + V / 2 + I / 2)...);
  }(std::make_index_sequence<V>{});
#else
  for (int64_t k = 0; k < V; ++k) {
    lo[k] = k % 2 ? y[k / 2] : x[k / 2];
    hi[k] = k % 2 ? y[V / 2 + k / 2] : x[V / 2 + k / 2];
  }
#endif
  store_lanes<acc_t, V>(p, lo, 2 * count);
  store_lanes<acc_t, V>(p + V, hi, 2 * count - V);
}

// floor_to_int lane by lane, for values within index_t's range (an output
// argument: a returned vector wider than the target's registers draws GCC's
// ABI warning wherever the function is not inlined).
template <typename index_t, typename acc_t, int64_t V>
inline void floor_lanes(const Vec<acc_t, V>& v, Vec<index_t, V>& out) {
  const Vec<index_t, V> t = __builtin_convertvector(v, Vec<index_t, V>);
  // a true comparison is -1
  out = t + __builtin_convertvector(__builtin_convertvector(t, Vec<acc_t, V>) > v, Vec<index_t, V>);
}

// Lanes [first, first + N) of v.
template <typename T, int64_t V, int64_t N>
inline void lanes_of(const Vec<T, V>& v, int64_t first, Vec<T, N>& out) {
  std::memcpy(&out, reinterpret_cast<const char*>(&v) + first * sizeof(T), sizeof(out));
}

// A vector of kSetupLanes samples, lane for lane what bilinear_corners gives
// (bilinear.h), zero padding included: whether the location has a corner
// inside the map (NaN has none), the fractional parts, the four bilinear
// weights and which corners are inside, in (h, w) order (low, low), (low,
// high), (high, low), (high, high), and the pixel index of corner 0.
template <typename acc_t, typename index_t>
struct SampleLanes {
  static constexpr int64_t V = kSetupLanes<acc_t>;
  using F = Vec<acc_t, V>; // coordinates and weights
  using I = Vec<index_t, V>; // pixel coordinates and indices
  using Mask = decltype(F{} < F{});

  F scale; // the attention weights
  F outside; // outside_sample(x, y)
  Mask valid;
  F lh, lw;
  F bilinear[4];
  I is_valid; // valid, as index_t lanes
  I inside[4];
  I pixel; // h_low * W + w_low; wraps (unsigned) where corner 0 is outside, and is not used there
};

// The lanes of samples [i, i + V) of a query whose first sample is slot
// `slot` of the levels; locations (count, 2) and attention_weights (count,)
// hold the query's samples from i on.
template <typename acc_t, typename index_t>
inline void sample_lanes(
    const SlotLevels<acc_t, index_t>& levels,
    int64_t slot,
    const acc_t* locations,
    const acc_t* attention_weights,
    int64_t count,
    SampleLanes<acc_t, index_t>& s) {
  constexpr int64_t V = SampleLanes<acc_t, index_t>::V;
  using F = typename SampleLanes<acc_t, index_t>::F;
  using I = typename SampleLanes<acc_t, index_t>::I;
  using U = Vec<std::make_unsigned_t<index_t>, V>;
  F x, y;
  load_pairs<acc_t, V>(locations, count, x, y);
  s.scale = load_lanes<acc_t, V>(attention_weights, count);
  const F H = load_lanes<acc_t, V>(levels.height.data() + slot, V);
  const F W = load_lanes<acc_t, V>(levels.width.data() + slot, V);
  const F h_im = y * H - acc_t(0.5);
  const F w_im = x * W - acc_t(0.5);
  // Written so that NaN fails it too.
  s.valid = (h_im >= acc_t(-1)) & (h_im < H) & (w_im >= acc_t(-1)) & (w_im < W);
  I h_low, w_low;
  floor_lanes<index_t, acc_t, V>(s.valid ? h_im : F{}, h_low);
  floor_lanes<index_t, acc_t, V>(s.valid ? w_im : F{}, w_low);
  s.lh = h_im - __builtin_convertvector(h_low, F);
  s.lw = w_im - __builtin_convertvector(w_low, F);
  corner_weights<acc_t>(s.lh, s.lw, s.bilinear);

  const I H_px = load_lanes<index_t, V>(levels.height_px.data() + slot, V);
  const I W_px = load_lanes<index_t, V>(levels.width_px.data() + slot, V);
  s.is_valid = __builtin_convertvector(s.valid, I);
  const I h_low_in = s.is_valid & (h_low >= 0) & (h_low < H_px);
  const I h_high_in = s.is_valid & (h_low + 1 < H_px);
  const I w_low_in = (w_low >= 0) & (w_low < W_px);
  const I w_high_in = w_low + 1 < W_px;
  s.inside[0] = h_low_in & w_low_in;
  s.inside[1] = h_low_in & w_high_in;
  s.inside[2] = h_high_in & w_low_in;
  s.inside[3] = h_high_in & w_high_in;
  s.outside = (x - x) + (y - y);
  s.pixel = (I)((U)h_low * (U)W_px + (U)w_low);
}

// Sets up samples [0, count) of a query, slots [slot, slot + count) of the
// levels, from their locations (count, 2) and attention weights (count,): the
// weight and the value row of each corner into rows (a corner outside the map
// points at bases.zeros with weight 0; a location with no corner inside, or not
// finite, has its sample, zero or NaN, as corner 0's weight, as outside_sample
// gives it). BackwardRows also take the corners' grad_value rows (bases.grad,
// or bases.scratch outside the map) and the location gradient's terms.
template <typename acc_t, typename index_t, typename Rows>
void set_up_query(
    const SlotLevels<acc_t, index_t>& levels,
    int64_t slot,
    const acc_t* locations,
    const acc_t* attention_weights,
    int64_t count,
    const RowBases& bases,
    Rows& rows) {
  constexpr bool kBackward = !std::is_same_v<Rows, QueryRows<acc_t>>;
  constexpr int64_t V = kSetupLanes<acc_t>;
  constexpr int64_t VA = kAddressLanes<acc_t>;
  using F = typename SampleLanes<acc_t, index_t>::F;
  using Mask = typename SampleLanes<acc_t, index_t>::Mask;
  using IA = Vec<index_t, VA>;
  using A = Vec<intptr_t, VA>; // addresses
  intptr_t* const address_out = rows.address.data();
  acc_t* const weight_out = rows.weight.data();
  const int64_t stride = rows.stride;
  const intptr_t next_pixel = levels.next_pixel;
  const A zero_row = A{} + bases.zeros;
  for (int64_t i = 0; i < count; i += V) {
    SampleLanes<acc_t, index_t> s;
    sample_lanes(levels, slot + i, locations + 2 * i, attention_weights + i, count - i, s);
    for (int c = 0; c < 4; ++c) {
      F weight = __builtin_convertvector(s.inside[c], Mask) ? s.scale * s.bilinear[c] : F{};
      if (c == 0) {
        weight = s.valid ? weight : s.scale * s.outside;
      }
      std::memcpy(weight_out + c * stride + i, &weight, sizeof(weight));
    }
    if constexpr (kBackward) {
      std::memcpy(rows.lh.data() + i, &s.lh, sizeof(s.lh));
      std::memcpy(rows.lw.data() + i, &s.lw, sizeof(s.lw));
      std::memcpy(rows.outside.data() + i, &s.outside, sizeof(s.outside));
      std::memcpy(rows.valid.data() + i, &s.is_valid, sizeof(s.is_valid));
    }

    for (int64_t j = 0; j < V; j += VA) {
      IA pixel_j;
      lanes_of<index_t, V, VA>(s.pixel, j, pixel_j);
      const A low_low = bases.value + load_lanes<intptr_t, VA>(levels.first_row.data() + slot + i + j, VA) +
          __builtin_convertvector(pixel_j, A) * next_pixel;
      const A below = load_lanes<intptr_t, VA>(levels.next_line.data() + slot + i + j, VA);
      const A corner[4] = {low_low, low_low + next_pixel, low_low + below, low_low + below + next_pixel};
      for (int c = 0; c < 4; ++c) {
        IA inside_j;
        lanes_of<index_t, V, VA>(s.inside[c], j, inside_j);
        const A inside = __builtin_convertvector(inside_j, A);
        const A address = inside ? corner[c] : zero_row;
        std::memcpy(address_out + c * stride + i + j, &address, sizeof(address));
        if constexpr (kBackward) {
          const A grad = inside ? bases.grad + (corner[c] - bases.value) * Rows::kGradScale : A{} + bases.scratch;
          std::memcpy(rows.grad_address.data() + c * stride + i + j, &grad, sizeof(grad));
        }
      }
    }
  }
}

// For samples [first, first + count) of rows: dots[c * stride + i] +=
// <grad_output, corner row c> over the block's channels, and grad row c +=
// weight c * grad_output.
template <int64_t W, typename scalar_t, typename acc_t, typename index_t>
inline void backward_block(
    const BackwardRows<scalar_t, acc_t, index_t>& rows,
    int64_t first,
    int64_t count,
    int64_t d0,
    const scalar_t* grad_output,
    acc_t* dots) {
  constexpr int64_t L = kLanes<acc_t, W>;
  Vec<acc_t, L> g[W / L];
  for (int64_t k = 0; k < W / L; ++k) {
    g[k] = load<acc_t, L>(grad_output + d0 + k * L);
  }
  const int64_t stride = rows.stride;
  for (int64_t i = first; i < first + count; ++i) {
    for (int c = 0; c < 4; ++c) {
      // offset by d0 here, so that the channels below sit at constant offsets
      const auto* value = reinterpret_cast<const scalar_t*>(rows.address[c * stride + i]) + d0;
      auto* grad = reinterpret_cast<acc_t*>(rows.grad_address[c * stride + i]) + d0;
      const acc_t weight = rows.weight[c * stride + i];
      Vec<acc_t, L> dot = {};
      for (int64_t k = 0; k < W / L; ++k) {
        dot += g[k] * load<acc_t, L>(value + k * L);
        store<acc_t, L>(grad + k * L, load<acc_t, L>(grad + k * L) + weight * g[k]);
      }
      dots[c * stride + i] += reduce_add<acc_t, L>(dot);
    }
  }
}

// The gradients of samples [0, count) of a query set up from slot `slot`, given
// dots[c * stride + i] = <grad_output, corner row c of sample i>:
// bilinear_grad_terms (bilinear.h) on vectors of lanes, into
// grad_attention_weights (count,) and, times the attention weights (count,),
// grad_locations (count, 2). A location with
// no corner inside the map has its sample (zero, or NaN) as both.
template <typename scalar_t, typename acc_t, typename index_t>
void location_grads(
    const SlotLevels<acc_t, index_t>& levels,
    int64_t slot,
    const BackwardRows<scalar_t, acc_t, index_t>& rows,
    const acc_t* dots,
    const acc_t* attention_weights,
    int64_t count,
    acc_t* grad_attention_weights,
    acc_t* grad_locations) {
  constexpr int64_t V = kSetupLanes<acc_t>;
  using F = typename SampleLanes<acc_t, index_t>::F;
  using Mask = typename SampleLanes<acc_t, index_t>::Mask;
  const int64_t stride = rows.stride;
  for (int64_t i = 0; i < count; i += V) {
    F dot[4];
    for (int c = 0; c < 4; ++c) {
      dot[c] = load_lanes<acc_t, V>(dots + c * stride + i, V);
    }
    const F lh = load_lanes<acc_t, V>(rows.lh.data() + i, V);
    const F lw = load_lanes<acc_t, V>(rows.lw.data() + i, V);
    const F H = load_lanes<acc_t, V>(levels.height.data() + slot + i, V);
    const F W = load_lanes<acc_t, V>(levels.width.data() + slot + i, V);
    F weight[4], sampled, grad_x, grad_y;
    corner_weights<acc_t>(lh, lw, weight);
    bilinear_grad_terms<acc_t>(weight, lh, lw, dot, H, W, sampled, grad_x, grad_y);

    const Mask valid = __builtin_convertvector(load_lanes<index_t, V>(rows.valid.data() + i, V), Mask);
    const F outside = load_lanes<acc_t, V>(rows.outside.data() + i, V);
    const F scale = load_lanes<acc_t, V>(attention_weights + i, count - i);
    store_lanes<acc_t, V>(grad_attention_weights + i, valid ? sampled : outside, count - i);
    store_pairs<acc_t, V>(
        grad_locations + 2 * i, count - i, scale * (valid ? grad_x : outside), scale * (valid ? grad_y : outside));
  }
}

// out[d0 : d0 + W] = the sum of the weighted corner rows of samples
// [first, first + count) of a query.
template <int64_t W, typename scalar_t, typename acc_t>
inline void forward_block(const QueryRows<acc_t>& rows, int64_t first, int64_t count, int64_t d0, scalar_t* out) {
  using Block = RowBlock<scalar_t, acc_t, W>;
  constexpr int64_t K = Block::K;
  typename Block::V acc[K] = {};
  const intptr_t* address = rows.address.data();
  const acc_t* weight = rows.weight.data();
  const int64_t stride = rows.stride;
  for (int64_t i = first; i < first + count; ++i) {
    typename Block::V v[4][K];
    acc_t w[4];
    for (int c = 0; c < 4; ++c) {
      Block::read(reinterpret_cast<const scalar_t*>(address[c * stride + i]) + d0, v[c]);
      w[c] = weight[c * stride + i];
    }
    for (int64_t k = 0; k < K; ++k) {
      acc[k] += w[0] * v[0][k] + w[1] * v[1][k] + w[2] * v[2][k] + w[3] * v[3][k];
    }
  }
  Block::write(out + d0, acc);
}

// The sampling locations of a query from its reference points and offsets:
// location (m, l, p) = reference (l) + offset (m, l, p) * offset_scale (l),
// for x and y; `reference` and `scale` are the query's (L, 2). A head's (L, P, 2)
// block of base and factor is laid out first, so that the product runs over
// contiguous rows of every head.
template <typename acc_t>
struct OffsetLocations {
  int64_t L, P;
  std::vector<acc_t> base, factor, locations;

  explicit OffsetLocations(const Sizes& s)
      : L(s.L), P(s.P), base(2 * s.L * s.P), factor(2 * s.L * s.P), locations(2 * s.M * s.L * s.P) {}

  const acc_t* of_query(int64_t M, const acc_t* reference, const acc_t* scale, const acc_t* offsets) {
    const int64_t head = 2 * L * P;
    acc_t* __restrict__ b = base.data();
    acc_t* __restrict__ f = factor.data();
    for (int64_t l = 0; l < L; ++l) {
      for (int64_t p = 0; p < P; ++p) {
        b[2 * (l * P + p)] = reference[2 * l];
        b[2 * (l * P + p) + 1] = reference[2 * l + 1];
        f[2 * (l * P + p)] = scale[2 * l];
        f[2 * (l * P + p) + 1] = scale[2 * l + 1];
      }
    }
    acc_t* __restrict__ out = locations.data();
    const acc_t* __restrict__ off = offsets;
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t j = 0; j < head; ++j) {
        out[m * head + j] = b[j] + off[m * head + j] * f[j];
      }
    }
    return out;
  }
};

// index_t: the set-up's integer lanes, int32 where every pixel index fits.
// With reference_points and offset_scale (N, Lq, L, 2) given, sampling_locations
// holds the offsets (see OffsetLocations); else both are null.
template <typename scalar_t, typename acc_t, typename index_t>
void forward_kernel(
    const Sizes& s,
    const scalar_t* value,
    const int64_t* spatial_shapes,
    const int64_t* level_start_index,
    const acc_t* sampling_locations,
    const acc_t* attention_weights,
    const acc_t* reference_points,
    const acc_t* offset_scale,
    scalar_t* output) {
  const int64_t work_per_item = std::max<int64_t>(1, s.M * s.L * s.P * s.D);
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / work_per_item);
  const int64_t samples = s.M * s.L * s.P; // of a query
  const int64_t head_samples = s.L * s.P;
  const auto levels = slot_levels<scalar_t, acc_t, index_t>(s, spatial_shapes, level_start_index);
  at::parallel_for(0, s.N * s.Lq, grain, [&](int64_t begin, int64_t end) {
    const std::vector<scalar_t> zeros(s.D, scalar_t(0));
    QueryRows<acc_t> rows(samples);
    OffsetLocations<acc_t> at_offsets(s);
    for (int64_t nq = begin; nq < end; ++nq) {
      const scalar_t* image = value + (nq / s.Lq) * s.S * s.M * s.D;
      const RowBases bases{reinterpret_cast<intptr_t>(image), reinterpret_cast<intptr_t>(zeros.data()), 0, 0};
      const acc_t* locations = sampling_locations + 2 * nq * samples;
      if (reference_points != nullptr) {
        locations = at_offsets.of_query(
            s.M, reference_points + 2 * nq * s.L, offset_scale + 2 * nq * s.L, locations);
      }
      set_up_query(levels, 0, locations, attention_weights + nq * samples, samples, bases, rows);
      for (int64_t m = 0; m < s.M; ++m) {
        scalar_t* out = output + (nq * s.M + m) * s.D;
        for_each_block(0, s.D, [&](auto width, int64_t d0) {
          forward_block<decltype(width)::value>(rows, m * head_samples, head_samples, d0, out);
        });
      }
    }
  });
}

template <typename scalar_t, typename acc_t, typename index_t>
void backward_kernel(
    const Sizes& s,
    const scalar_t* grad_output,
    const scalar_t* value,
    const int64_t* spatial_shapes,
    const int64_t* level_start_index,
    const acc_t* sampling_locations,
    const acc_t* attention_weights,
    acc_t* grad_value,
    acc_t* grad_sampling_locations,
    acc_t* grad_attention_weights) {
  const int64_t samples = s.M * s.L * s.P; // of a query
  const int64_t head_samples = s.L * s.P;
  const int64_t image_size = s.S * s.M * s.D;
  const auto levels = slot_levels<scalar_t, acc_t, index_t>(s, spatial_shapes, level_start_index);
  at::parallel_for(0, s.N * s.M, 1, [&](int64_t begin, int64_t end) {
    BackwardRows<scalar_t, acc_t, index_t> rows(samples);
    std::vector<acc_t> dots(4 * rows.stride);
    const std::vector<scalar_t> zeros(s.D, scalar_t(0));
    std::vector<acc_t> scratch(s.D);
    // Query by query over the thread's heads of one image: a query's rows of
    // grad_output, locations and weights are then read in memory order. Each
    // head still takes its queries in order, so the result does not depend on
    // how the heads are split among threads.
    for (int64_t n = begin / s.M; n * s.M < end; ++n) {
      const int64_t m_begin = std::max(begin - n * s.M, int64_t(0));
      const int64_t m_end = std::min(end - n * s.M, s.M);
      // the thread's samples of a query: slots [first, first + count)
      const int64_t first = m_begin * head_samples, count = (m_end - m_begin) * head_samples;
      const RowBases bases{
          reinterpret_cast<intptr_t>(value + n * image_size), reinterpret_cast<intptr_t>(zeros.data()),
          reinterpret_cast<intptr_t>(grad_value + n * image_size), reinterpret_cast<intptr_t>(scratch.data())};
      for (int64_t q = 0; q < s.Lq; ++q) {
        const int64_t sample = (n * s.Lq + q) * samples + first;
        set_up_query(levels, first, sampling_locations + 2 * sample, attention_weights + sample, count, bases, rows);
        std::fill(dots.begin(), dots.end(), acc_t(0));
        // No prefetching: with the set-up in vectors, prefetching the corner
        // rows of a head (just before its channel loops, or a head ahead) did
        // not make the backward faster.
        for (int64_t m = m_begin; m < m_end; ++m) {
          const int64_t i = (m - m_begin) * head_samples;
          const scalar_t* g = grad_output + ((n * s.Lq + q) * s.M + m) * s.D;
          for_each_block(0, s.D, [&](auto width, int64_t d0) {
            backward_block<decltype(width)::value>(rows, i, head_samples, d0, g, dots.data());
          });
        }
        location_grads(
            levels, first, rows, dots.data(), attention_weights + sample, count, grad_attention_weights + sample,
            grad_sampling_locations + 2 * sample);
      }
    }
  });
}

// Calls run(index_t{}) with the set-up's integer lanes: int32 where every
// pixel index fits (a level's H, W and pixel indices are all at most S).
template <typename Fn>
void with_index_type(const Sizes& s, const Fn& run) {
  if (s.S <= std::numeric_limits<int32_t>::max()) {
    run(int32_t{});
  } else {
    run(int64_t{});
  }
}

void forward(
    const Sizes& s,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor* reference_points,
    const at::Tensor* offset_scale,
    const at::Tensor& output) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_index_type(s, [&](auto index) {
      forward_kernel<scalar_t, acc_t, decltype(index)>(
          s,
          value.const_data_ptr<scalar_t>(),
          spatial_shapes.const_data_ptr<int64_t>(),
          level_start_index.const_data_ptr<int64_t>(),
          sampling_locations.const_data_ptr<acc_t>(),
          attention_weights.const_data_ptr<acc_t>(),
          reference_points ? reference_points->const_data_ptr<acc_t>() : nullptr,
          offset_scale ? offset_scale->const_data_ptr<acc_t>() : nullptr,
          output.mutable_data_ptr<scalar_t>());
    });
  });
}

void backward(
    const Sizes& s,
    const at::Tensor& grad_output,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& grad_value,
    const at::Tensor& grad_sampling_locations,
    const at::Tensor& grad_attention_weights) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_index_type(s, [&](auto index) {
      backward_kernel<scalar_t, acc_t, decltype(index)>(
          s,
          grad_output.const_data_ptr<scalar_t>(),
          value.const_data_ptr<scalar_t>(),
          spatial_shapes.const_data_ptr<int64_t>(),
          level_start_index.const_data_ptr<int64_t>(),
          sampling_locations.const_data_ptr<acc_t>(),
          attention_weights.const_data_ptr<acc_t>(),
          grad_value.mutable_data_ptr<acc_t>(),
          grad_sampling_locations.mutable_data_ptr<acc_t>(),
          grad_attention_weights.mutable_data_ptr<acc_t>());
    });
  });
}

} // namespace

Kernels kernels() {
  return {&forward, &backward};
}

} // namespace D2EXT_CPU_ISA
} // namespace cpu
} // namespace d2ext

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#ifdef D2EXT_CPU_TARGET
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
