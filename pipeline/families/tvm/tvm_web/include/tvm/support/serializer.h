/*
 * Binary serializer for tvm::support::Stream (our own header, written for the TVM web runtime build).
 *
 * Wire format (little endian, as TVM's writer produces it):
 *   trivially copyable values (integers, floats, enums, DLDataType, DLDevice): their bytes
 *   strings (std::string, ffi::String): u64 length, then the bytes
 *   sequences (std::vector, ffi::Array): u64 count, then the elements
 *   maps (std::map, std::unordered_map, ffi::Map): u64 count, then key, value for each entry
 *   std::pair: first, then second
 */
#ifndef TVM_SUPPORT_SERIALIZER_H_
#define TVM_SUPPORT_SERIALIZER_H_

#include <tvm/support/io.h>

#include <cstdint>
#include <map>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#if __has_include(<tvm/ffi/string.h>)
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/string.h>
#define TVM_SUPPORT_SERIALIZER_HAS_FFI 1
#endif

namespace tvm {
namespace support {

/*! \brief Default: trivially copyable values are written as their bytes. */
template <typename T>
struct Serializer {
  static constexpr bool enabled = std::is_trivially_copyable<T>::value;
  static void Write(Stream* strm, const T& value) {
    static_assert(std::is_trivially_copyable<T>::value, "no Serializer for this type");
    strm->Write(static_cast<const void*>(&value), sizeof(T));
  }
  static bool Read(Stream* strm, T* out) {
    static_assert(std::is_trivially_copyable<T>::value, "no Serializer for this type");
    return strm->Read(static_cast<void*>(out), sizeof(T)) == sizeof(T);
  }
};

namespace detail {
inline bool ReadCount(Stream* strm, uint64_t* n) {
  return strm->Read(static_cast<void*>(n), sizeof(uint64_t)) == sizeof(uint64_t);
}
inline void WriteCount(Stream* strm, uint64_t n) { strm->Write(static_cast<const void*>(&n), sizeof(n)); }

inline void WriteBytes(Stream* strm, const char* data, size_t n) {
  WriteCount(strm, n);
  if (n != 0) strm->Write(static_cast<const void*>(data), n);
}
inline bool ReadBytes(Stream* strm, std::string* out) {
  uint64_t n;
  if (!ReadCount(strm, &n)) return false;
  out->resize(static_cast<size_t>(n));
  return n == 0 || strm->Read(static_cast<void*>(&(*out)[0]), static_cast<size_t>(n)) == n;
}

template <typename Seq>
void WriteSeq(Stream* strm, const Seq& seq, size_t n) {
  WriteCount(strm, n);
  for (const auto& v : seq) strm->Write(v);
}

template <typename K, typename V, typename MapT>
void WriteMap(Stream* strm, const MapT& m) {
  WriteCount(strm, m.size());
  for (const auto& kv : m) {
    strm->Write(K(kv.first));
    strm->Write(V(kv.second));
  }
}

template <typename K, typename V, typename F>
bool ReadMap(Stream* strm, F insert) {
  uint64_t n;
  if (!ReadCount(strm, &n)) return false;
  for (uint64_t i = 0; i < n; ++i) {
    K k;
    V v;
    if (!strm->Read(&k) || !strm->Read(&v)) return false;
    insert(std::move(k), std::move(v));
  }
  return true;
}
}  // namespace detail

template <>
struct Serializer<std::string> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::string& s) { detail::WriteBytes(strm, s.data(), s.size()); }
  static bool Read(Stream* strm, std::string* out) { return detail::ReadBytes(strm, out); }
};

template <typename A, typename B>
struct Serializer<std::pair<A, B>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::pair<A, B>& p) {
    strm->Write(p.first);
    strm->Write(p.second);
  }
  static bool Read(Stream* strm, std::pair<A, B>* out) {
    return strm->Read(&out->first) && strm->Read(&out->second);
  }
};

template <typename T, typename Alloc>
struct Serializer<std::vector<T, Alloc>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::vector<T, Alloc>& v) {
    if constexpr (std::is_trivially_copyable<T>::value && !std::is_same<T, bool>::value) {
      detail::WriteCount(strm, v.size());
      if (!v.empty()) strm->Write(static_cast<const void*>(v.data()), v.size() * sizeof(T));
    } else {
      detail::WriteSeq(strm, v, v.size());
    }
  }
  static bool Read(Stream* strm, std::vector<T, Alloc>* out) {
    uint64_t n;
    if (!detail::ReadCount(strm, &n)) return false;
    out->resize(static_cast<size_t>(n));
    if constexpr (std::is_trivially_copyable<T>::value && !std::is_same<T, bool>::value) {
      size_t bytes = static_cast<size_t>(n) * sizeof(T);
      return n == 0 || strm->Read(static_cast<void*>(out->data()), bytes) == bytes;
    } else {
      for (uint64_t i = 0; i < n; ++i) {
        T v;
        if (!strm->Read(&v)) return false;
        (*out)[i] = std::move(v);
      }
      return true;
    }
  }
};

template <typename K, typename V, typename... Rest>
struct Serializer<std::map<K, V, Rest...>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::map<K, V, Rest...>& m) { detail::WriteMap<K, V>(strm, m); }
  static bool Read(Stream* strm, std::map<K, V, Rest...>* out) {
    out->clear();
    return detail::ReadMap<K, V>(strm, [out](K k, V v) { (*out)[std::move(k)] = std::move(v); });
  }
};

template <typename K, typename V, typename... Rest>
struct Serializer<std::unordered_map<K, V, Rest...>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::unordered_map<K, V, Rest...>& m) {
    detail::WriteMap<K, V>(strm, m);
  }
  static bool Read(Stream* strm, std::unordered_map<K, V, Rest...>* out) {
    out->clear();
    return detail::ReadMap<K, V>(strm, [out](K k, V v) { (*out)[std::move(k)] = std::move(v); });
  }
};

#ifdef TVM_SUPPORT_SERIALIZER_HAS_FFI
template <>
struct Serializer<ffi::String> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::String& s) { detail::WriteBytes(strm, s.data(), s.size()); }
  static bool Read(Stream* strm, ffi::String* out) {
    std::string tmp;
    if (!detail::ReadBytes(strm, &tmp)) return false;
    *out = ffi::String(std::move(tmp));
    return true;
  }
};

template <typename T>
struct Serializer<ffi::Array<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::Array<T>& arr) {
    detail::WriteCount(strm, arr.size());
    for (size_t i = 0; i < arr.size(); ++i) strm->Write(T(arr[i]));
  }
  static bool Read(Stream* strm, ffi::Array<T>* out) {
    uint64_t n;
    if (!detail::ReadCount(strm, &n)) return false;
    ffi::Array<T> result;
    result.reserve(static_cast<int64_t>(n));
    for (uint64_t i = 0; i < n; ++i) {
      T v;
      if (!strm->Read(&v)) return false;
      result.push_back(std::move(v));
    }
    *out = std::move(result);
    return true;
  }
};

template <typename K, typename V>
struct Serializer<ffi::Map<K, V>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::Map<K, V>& m) { detail::WriteMap<K, V>(strm, m); }
  static bool Read(Stream* strm, ffi::Map<K, V>* out) {
    ffi::Map<K, V> result;
    if (!detail::ReadMap<K, V>(strm, [&result](K k, V v) { result.Set(std::move(k), std::move(v)); })) {
      return false;
    }
    *out = std::move(result);
    return true;
  }
};
#endif  // TVM_SUPPORT_SERIALIZER_HAS_FFI

// ---- Stream's typed members (declared in io.h) ----
template <typename T>
inline void Stream::Write(const T& value) {
  Serializer<T>::Write(this, value);
}

template <typename T>
inline bool Stream::Read(T* out) {
  return Serializer<T>::Read(this, out);
}

template <typename T>
inline void Stream::WriteArray(const T* data, size_t n) {
  if constexpr (std::is_trivially_copyable<T>::value) {
    if (n != 0) this->Write(static_cast<const void*>(data), n * sizeof(T));
  } else {
    for (size_t i = 0; i < n; ++i) this->Write(data[i]);
  }
}

template <typename T>
inline bool Stream::ReadArray(T* data, size_t n) {
  if constexpr (std::is_trivially_copyable<T>::value) {
    return n == 0 || this->Read(static_cast<void*>(data), n * sizeof(T)) == n * sizeof(T);
  } else {
    for (size_t i = 0; i < n; ++i) {
      if (!this->Read(data + i)) return false;
    }
    return true;
  }
}

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_SERIALIZER_H_
