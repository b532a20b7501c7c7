/*
 * Growable FIFO byte buffer (our own header for the TVM web runtime build; used by the RPC endpoint).
 */
#ifndef TVM_SUPPORT_RING_BUFFER_H_
#define TVM_SUPPORT_RING_BUFFER_H_

#include <algorithm>
#include <cstring>
#include <vector>

namespace tvm {
namespace support {

class RingBuffer {
 public:
  RingBuffer() : data_(kInitCapacity) {}

  size_t bytes_available() const { return size_; }
  size_t capacity() const { return data_.size(); }

  /*! \brief Make room for at least n bytes in total (keeps the content). */
  void Reserve(size_t n) {
    if (n <= data_.size()) return;
    std::vector<char> grown(std::max(n, data_.size() * 2));
    CopyOut(grown.data(), size_);
    data_.swap(grown);
    head_ = 0;
  }

  /*! \brief Pop exactly size bytes (caller checks bytes_available()). */
  void Read(void* out, size_t size) {
    if (size > size_) size = size_;
    CopyOut(static_cast<char*>(out), size);
    Drop(size);
  }

  /*! \brief Push size bytes. */
  void Write(const void* in, size_t size) {
    Reserve(size_ + size);
    const char* p = static_cast<const char*>(in);
    size_t tail = (head_ + size_) % data_.size();
    size_t first = std::min(size, data_.size() - tail);
    std::memcpy(data_.data() + tail, p, first);
    std::memcpy(data_.data(), p + first, size - first);
    size_ += size;
  }

  /*! \brief Hand up to max_nbytes of the oldest bytes to f(const void*, size_t) -> consumed. */
  template <typename F>
  size_t ReadWithCallback(F f, size_t max_nbytes) {
    size_t n = std::min(max_nbytes, std::min(size_, data_.size() - head_));
    if (n == 0) return 0;
    size_t done = f(data_.data() + head_, n);
    Drop(std::min(done, n));
    return done;
  }

  /*! \brief Let f(void*, size_t) -> produced fill up to max_nbytes of free space. */
  template <typename F>
  size_t WriteWithCallback(F f, size_t max_nbytes) {
    Reserve(size_ + max_nbytes);
    size_t cap = data_.size();
    size_t tail = (head_ + size_) % cap;
    // contiguous free space starting at tail (the buffer is never full here: Reserve made room)
    size_t contiguous = tail >= head_ ? cap - tail : head_ - tail;
    size_t n = std::min(max_nbytes, contiguous);
    if (n == 0) return 0;
    size_t done = f(data_.data() + tail, n);
    size_ += std::min(done, n);
    return done;
  }

 private:
  static constexpr size_t kInitCapacity = 4096;

  void CopyOut(char* out, size_t size) const {
    size_t first = std::min(size, data_.size() - head_);
    std::memcpy(out, data_.data() + head_, first);
    std::memcpy(out + first, data_.data(), size - first);
  }
  void Drop(size_t n) {
    size_ -= n;
    head_ = size_ == 0 ? 0 : (head_ + n) % data_.size();
  }

  std::vector<char> data_;
  size_t head_{0};
  size_t size_{0};
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_RING_BUFFER_H_
