/*
 * In-memory byte streams (our own header for the TVM web runtime build).
 */
#ifndef TVM_SUPPORT_BYTES_IO_H_
#define TVM_SUPPORT_BYTES_IO_H_

#include <tvm/support/io.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace tvm {
namespace support {

/*! \brief Reads from a borrowed buffer (std::string, ffi::Bytes, ffi::String: anything with data()/size()). */
class BytesInStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  BytesInStream(const char* data, size_t size) : data_(data), size_(size) {}
  template <typename Buffer, typename = decltype(std::declval<const Buffer&>().data()),
            typename = decltype(std::declval<const Buffer&>().size())>
  explicit BytesInStream(const Buffer& buf)
      : data_(reinterpret_cast<const char*>(buf.data())), size_(buf.size()) {}

  size_t Read(void* ptr, size_t size) final {
    size_t n = std::min(size, size_ - pos_);
    if (n != 0) std::memcpy(ptr, data_ + pos_, n);
    pos_ += n;
    return n;
  }
  size_t Write(const void*, size_t) final { return 0; }  // read-only
  void Seek(size_t pos) { pos_ = std::min(pos, size_); }
  size_t Tell() const { return pos_; }

 private:
  const char* data_;
  size_t size_;
  size_t pos_{0};
};

/*! \brief Appends to a caller-owned std::string. */
class BytesOutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit BytesOutStream(std::string* out) : out_(out) {}

  size_t Read(void*, size_t) final { return 0; }  // write-only
  size_t Write(const void* ptr, size_t size) final {
    out_->append(static_cast<const char*>(ptr), size);
    return size;
  }
  size_t Tell() const { return out_->size(); }

 private:
  std::string* out_;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_BYTES_IO_H_
