/*
 * Base64 (RFC 4648 alphabet, '=' padding) streams over another Stream (our own header).
 */
#ifndef TVM_SUPPORT_BASE64_H_
#define TVM_SUPPORT_BASE64_H_

#include <tvm/support/io.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace tvm {
namespace support {
namespace base64 {
inline const char* Alphabet() { return "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"; }
inline int Value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}
}  // namespace base64

/*! \brief Decodes base64 text read from `in`. Whitespace is skipped; decoding stops at padding or end. */
class Base64InStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64InStream(Stream* in) : in_(in) {}

  /*! \brief Decode everything the underlying stream still holds. */
  void InitPosition() {
    if (ready_) return;
    ready_ = true;
    std::string text;
    char buf[4096];
    size_t n;
    while ((n = in_->Read(buf, sizeof(buf))) != 0) text.append(buf, n);
    uint32_t acc = 0;
    int bits = 0;
    for (char c : text) {
      if (c == '=') break;
      int v = base64::Value(c);
      if (v < 0) continue;  // whitespace / line breaks
      acc = (acc << 6) | static_cast<uint32_t>(v);
      bits += 6;
      if (bits >= 8) {
        bits -= 8;
        decoded_.push_back(static_cast<char>((acc >> bits) & 0xFF));
      }
    }
  }

  size_t Read(void* ptr, size_t size) final {
    InitPosition();
    size_t n = std::min(size, decoded_.size() - pos_);
    if (n != 0) std::memcpy(ptr, decoded_.data() + pos_, n);
    pos_ += n;
    return n;
  }
  size_t Write(const void*, size_t) final { return 0; }

 private:
  Stream* in_;
  bool ready_{false};
  std::string decoded_;
  size_t pos_{0};
};

/*! \brief Encodes bytes as base64 text into `out`; call Finish() to flush the last group and padding. */
class Base64OutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64OutStream(Stream* out) : out_(out) {}

  size_t Read(void*, size_t) final { return 0; }
  size_t Write(const void* ptr, size_t size) final {
    const unsigned char* p = static_cast<const unsigned char*>(ptr);
    for (size_t i = 0; i < size; ++i) {
      group_[ngroup_++] = p[i];
      if (ngroup_ == 3) EmitGroup();
    }
    return size;
  }
  void Finish() {
    if (ngroup_ != 0) EmitGroup();
  }

 private:
  void EmitGroup() {
    const char* a = base64::Alphabet();
    uint32_t v = (uint32_t(group_[0]) << 16) | (ngroup_ > 1 ? uint32_t(group_[1]) << 8 : 0) |
                 (ngroup_ > 2 ? uint32_t(group_[2]) : 0);
    char text[4] = {a[(v >> 18) & 63], a[(v >> 12) & 63], ngroup_ > 1 ? a[(v >> 6) & 63] : '=',
                    ngroup_ > 2 ? a[v & 63] : '='};
    out_->Write(static_cast<const void*>(text), sizeof(text));
    ngroup_ = 0;
  }

  Stream* out_;
  unsigned char group_[3] = {0, 0, 0};
  int ngroup_{0};
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_BASE64_H_
