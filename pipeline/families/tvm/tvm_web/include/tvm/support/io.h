/*
 * Byte stream interface used by the TVM runtime sources (our own header; the apache-tvm wheel does not ship it).
 *
 * A Stream moves raw bytes (virtual Read/Write) and typed values through tvm::support::Serializer
 * (see serializer.h for the wire format).
 */
#ifndef TVM_SUPPORT_IO_H_
#define TVM_SUPPORT_IO_H_

#include <cstddef>
#include <cstdint>

namespace tvm {
namespace support {

template <typename T>
struct Serializer;

class Stream {
 public:
  virtual ~Stream() = default;
  /*! \brief Read up to size bytes; returns the number of bytes read. */
  virtual size_t Read(void* ptr, size_t size) = 0;
  /*! \brief Write size bytes; returns the number of bytes written. */
  virtual size_t Write(const void* ptr, size_t size) = 0;

  /*! \brief Write one value in TVM's binary format. */
  template <typename T>
  void Write(const T& value);
  /*! \brief Read one value; false on a short or malformed stream. */
  template <typename T>
  bool Read(T* out);
  /*! \brief Write n values (no count prefix). */
  template <typename T>
  void WriteArray(const T* data, size_t n);
  /*! \brief Read n values (no count prefix). */
  template <typename T>
  bool ReadArray(T* data, size_t n);
};

}  // namespace support
}  // namespace tvm

#include <tvm/support/serializer.h>

#endif  // TVM_SUPPORT_IO_H_
