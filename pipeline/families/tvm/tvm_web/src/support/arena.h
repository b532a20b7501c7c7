/*
 * Page-based bump allocator (our own header for the TVM web runtime build).
 * Memory handed out lives until RecycleAll() (reuse the pages) or FreeAll() (release them).
 */
#ifndef TVM_SUPPORT_ARENA_H_
#define TVM_SUPPORT_ARENA_H_

#include <cstddef>
#include <cstdlib>
#include <new>
#include <type_traits>

namespace tvm {
namespace support {

/*! \brief Header at the start of every arena page; allocations follow it. */
struct ArenaPageHeader {
  ArenaPageHeader* next;
  size_t size;    // total bytes of the page, header included
  size_t offset;  // first free byte, from the page start
};

/*! \brief Default page source: malloc'd pages of at least kPageSize bytes. */
class SimplePageAllocator {
 public:
  static constexpr size_t kPageSize = 16 << 10;
  static constexpr size_t kPageAlign = 16;

  ArenaPageHeader* allocate(size_t min_size) {
    size_t npages = (min_size + kPageSize - 1) / kPageSize;
    void* data = std::malloc(npages * kPageSize);
    if (data == nullptr) throw std::bad_alloc();
    ArenaPageHeader* page = static_cast<ArenaPageHeader*>(data);
    page->size = npages * kPageSize;
    page->offset = sizeof(ArenaPageHeader);
    return page;
  }
  void deallocate(ArenaPageHeader* page) { std::free(page); }
};

template <typename PageAllocator>
class GenericArena {
 public:
  template <typename... Args>
  explicit GenericArena(Args&&... args) : alloc_(std::forward<Args>(args)...) {}
  GenericArena(const GenericArena&) = delete;
  GenericArena& operator=(const GenericArena&) = delete;
  ~GenericArena() { FreeAll(); }

  void* Alloc(size_t size, size_t align = alignof(std::max_align_t)) {
    if (head_ != nullptr) {
      size_t start = (head_->offset + align - 1) / align * align;
      if (start + size <= head_->size) {
        head_->offset = start + size;
        return reinterpret_cast<char*>(head_) + start;
      }
    }
    ArenaPageHeader* page = free_;
    if (page != nullptr && page->size >= sizeof(ArenaPageHeader) + size + align) {
      free_ = page->next;
    } else {
      page = alloc_.allocate(sizeof(ArenaPageHeader) + size + align);
    }
    page->offset = sizeof(ArenaPageHeader);
    page->next = head_;
    head_ = page;
    size_t start = (page->offset + align - 1) / align * align;
    page->offset = start + size;
    return reinterpret_cast<char*>(page) + start;
  }

  template <typename T>
  T* allocate_(int count = 1) {
    static_assert(std::is_trivial<T>::value, "arena only holds trivial types");
    return static_cast<T*>(Alloc(sizeof(T) * static_cast<size_t>(count < 1 ? 1 : count), alignof(T)));
  }

  /*! \brief Forget all allocations; keep the pages for reuse. */
  void RecycleAll() {
    while (head_ != nullptr) {
      ArenaPageHeader* next = head_->next;
      head_->next = free_;
      free_ = head_;
      head_ = next;
    }
  }

  /*! \brief Release every page. */
  void FreeAll() {
    RecycleAll();
    while (free_ != nullptr) {
      ArenaPageHeader* next = free_->next;
      alloc_.deallocate(free_);
      free_ = next;
    }
  }

 private:
  PageAllocator alloc_;
  ArenaPageHeader* head_{nullptr};
  ArenaPageHeader* free_{nullptr};
};

using Arena = GenericArena<SimplePageAllocator>;

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_ARENA_H_
