/*
 * IEEE-754 binary float width conversions (our own header for the TVM web runtime build).
 *
 *   __extendXfYf2__<SrcT, SrcRep, SrcSigBits, DstT, DstRep, DstSigBits>(a)  narrow -> wide (exact)
 *   __truncXfYf2__<SrcT, SrcRep, SrcSigBits, DstT, DstRep, DstSigBits>(a)   wide -> narrow (round to nearest even)
 *
 * e.g. half bits -> float: __extendXfYf2__<uint16_t, uint16_t, 10, float, uint32_t, 23>(bits)
 *      float -> half bits: __truncXfYf2__<float, uint32_t, 23, uint16_t, uint16_t, 10>(x)
 */
#ifndef TVM_3RDPARTY_COMPILER_RT_BUILTIN_FP16_H_
#define TVM_3RDPARTY_COMPILER_RT_BUILTIN_FP16_H_

#include <cstdint>
#include <cstring>

namespace tvm_fp_detail {
template <typename Rep, int SigBits>
struct Layout {
  static constexpr int kBits = static_cast<int>(sizeof(Rep) * 8);
  static constexpr int kExpBits = kBits - SigBits - 1;
  static constexpr int kBias = (1 << (kExpBits - 1)) - 1;
  static constexpr Rep kImplicit = Rep(1) << SigBits;  // also the smallest normal
  static constexpr Rep kSigMask = kImplicit - 1;
  static constexpr Rep kSign = Rep(1) << (kBits - 1);
  static constexpr Rep kAbs = kSign - 1;
  static constexpr Rep kInf = kAbs ^ kSigMask;
  static constexpr Rep kQuiet = kImplicit >> 1;
};

template <typename To, typename From>
inline To BitCast(const From& v) {
  static_assert(sizeof(To) == sizeof(From), "size mismatch");
  To out;
  std::memcpy(&out, &v, sizeof(To));
  return out;
}
}  // namespace tvm_fp_detail

template <typename SRC_T, typename SRC_REP_T, int SRC_SIG_BITS, typename DST_T, typename DST_REP_T,
          int DST_SIG_BITS>
static inline DST_T __extendXfYf2__(SRC_T a) {
  using S = tvm_fp_detail::Layout<SRC_REP_T, SRC_SIG_BITS>;
  using D = tvm_fp_detail::Layout<DST_REP_T, DST_SIG_BITS>;
  const SRC_REP_T rep = tvm_fp_detail::BitCast<SRC_REP_T>(a);
  const SRC_REP_T sign = rep & S::kSign;
  const SRC_REP_T abs = rep & S::kAbs;
  DST_REP_T out;
  if (abs >= S::kImplicit && abs < S::kInf) {  // normal
    out = DST_REP_T(abs) << (DST_SIG_BITS - SRC_SIG_BITS);
    out += DST_REP_T(D::kBias - S::kBias) << DST_SIG_BITS;
  } else if (abs >= S::kInf) {  // inf / nan (payload kept)
    out = D::kInf | (DST_REP_T(abs & S::kSigMask) << (DST_SIG_BITS - SRC_SIG_BITS));
  } else if (abs != 0) {  // subnormal source: normalise
    SRC_REP_T m = abs;
    int shift = 0;
    while ((m & S::kImplicit) == 0) {
      m <<= 1;
      ++shift;
    }
    const int exp = 1 - S::kBias - shift + D::kBias;
    out = (DST_REP_T(m & S::kSigMask) << (DST_SIG_BITS - SRC_SIG_BITS)) | (DST_REP_T(exp) << DST_SIG_BITS);
  } else {
    out = 0;
  }
  out |= DST_REP_T(sign) << (D::kBits - S::kBits);
  return tvm_fp_detail::BitCast<DST_T>(out);
}

template <typename SRC_T, typename SRC_REP_T, int SRC_SIG_BITS, typename DST_T, typename DST_REP_T,
          int DST_SIG_BITS>
static inline DST_T __truncXfYf2__(SRC_T a) {
  using S = tvm_fp_detail::Layout<SRC_REP_T, SRC_SIG_BITS>;
  using D = tvm_fp_detail::Layout<DST_REP_T, DST_SIG_BITS>;
  constexpr int kDrop = SRC_SIG_BITS - DST_SIG_BITS;
  constexpr SRC_REP_T kRoundMask = (SRC_REP_T(1) << kDrop) - 1;
  constexpr SRC_REP_T kHalf = SRC_REP_T(1) << (kDrop - 1);
  // smallest source value that is normal in the destination, and the first that overflows it
  constexpr SRC_REP_T kUnderflow = SRC_REP_T(S::kBias + 1 - D::kBias) << SRC_SIG_BITS;
  constexpr SRC_REP_T kOverflow = SRC_REP_T(S::kBias + (D::kInf >> DST_SIG_BITS) - D::kBias) << SRC_SIG_BITS;

  const SRC_REP_T rep = tvm_fp_detail::BitCast<SRC_REP_T>(a);
  const SRC_REP_T abs = rep & S::kAbs;
  const SRC_REP_T sign = rep & S::kSign;
  DST_REP_T out;
  auto round = [](SRC_REP_T value) {
    DST_REP_T r = DST_REP_T(value >> kDrop);
    SRC_REP_T rest = value & kRoundMask;
    if (rest > kHalf || (rest == kHalf && (r & 1))) ++r;  // nearest, ties to even; may carry into exponent
    return r;
  };
  if (abs >= kUnderflow && abs < kOverflow) {  // normal in the destination
    out = round(abs - (SRC_REP_T(S::kBias - D::kBias) << SRC_SIG_BITS));
  } else if (abs > S::kInf) {  // nan: quiet, keep the top payload bits
    out = D::kInf | D::kQuiet | DST_REP_T((abs & S::kSigMask) >> kDrop);
  } else if (abs >= kOverflow) {  // too large (or inf)
    out = D::kInf;
  } else {  // subnormal or zero in the destination
    const int exp = static_cast<int>(abs >> SRC_SIG_BITS);
    const int shift = S::kBias - D::kBias - exp + 1;
    const SRC_REP_T sig = (abs & S::kSigMask) | S::kImplicit;
    if (shift > SRC_SIG_BITS) {
      out = 0;
    } else {
      const bool sticky = (sig << (S::kBits - shift)) != 0;
      out = round((sig >> shift) | SRC_REP_T(sticky));
    }
  }
  out |= DST_REP_T(sign >> (S::kBits - D::kBits));
  return tvm_fp_detail::BitCast<DST_T>(out);
}

#endif  // TVM_3RDPARTY_COMPILER_RT_BUILTIN_FP16_H_
