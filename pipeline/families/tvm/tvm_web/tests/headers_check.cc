// Checks our TVM support headers natively (g++), driven by tests/test_tvm.py.
//
//   headers_check params <in.bin> <out.bin>   parse a tvm.runtime.save_param_dict blob with our Stream/Serializer,
//                                             print a JSON summary, write it back with our writer (must be identical)
//   headers_check b64 <in.bin> <out.txt>      base64-encode with Base64OutStream, decode back with Base64InStream
//   headers_check fp16 <in.f32> <out.u16>     float32 -> half bits (__truncXfYf2__)
//   headers_check fp16ext <out.f32>           all 65536 half bit patterns -> float32 (__extendXfYf2__)
//   headers_check containers                  std/ffi containers, RingBuffer and Arena round trips
#include <dlpack/dlpack.h>
#include <tvm/support/io.h>
#include <tvm/support/serializer.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "../3rdparty/compiler-rt/builtin_fp16.h"
#include "../src/support/arena.h"
#include "../src/support/base64.h"
#include "../src/support/bytes_io.h"
#include "../src/support/ring_buffer.h"
#include "../src/support/utils.h"

using namespace tvm::support;

static std::string ReadFile(const char* path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}
static void WriteFile(const char* path, const std::string& s) {
  std::ofstream f(path, std::ios::binary);
  f.write(s.data(), s.size());
}
#define CHECK(cond)                                                      \
  do {                                                                   \
    if (!(cond)) {                                                       \
      std::cerr << "CHECK failed: " #cond " line " << __LINE__ << "\n"; \
      return 1;                                                          \
    }                                                                    \
  } while (0)

struct Tensor {
  uint64_t header, reserved;
  DLDevice dev;
  int32_t ndim;
  DLDataType dtype;
  std::vector<int64_t> shape;
  std::string data;
};

static int Params(const char* in, const char* out) {
  std::string blob = ReadFile(in);
  BytesInStream strm(blob);
  uint64_t header, reserved, count;
  std::vector<std::string> names;
  CHECK(strm.Read(&header));
  CHECK(strm.Read(&reserved));
  CHECK(strm.Read(&names));
  CHECK(strm.Read(&count));
  CHECK(count == names.size());
  std::vector<Tensor> tensors(count);
  std::cout << "{\"header\": " << header << ", \"tensors\": [";
  for (uint64_t i = 0; i < count; ++i) {
    Tensor& t = tensors[i];
    CHECK(strm.Read(&t.header));
    CHECK(strm.Read(&t.reserved));
    CHECK(strm.Read(&t.dev));
    CHECK(strm.Read(&t.ndim));
    CHECK(strm.Read(&t.dtype));
    t.shape.resize(t.ndim);
    CHECK(strm.ReadArray(t.shape.data(), t.ndim));
    int64_t nbytes;
    CHECK(strm.Read(&nbytes));
    t.data.resize(nbytes);
    CHECK(strm.Read(&t.data[0], nbytes) == static_cast<size_t>(nbytes));
    double first = 0;
    if (t.dtype.code == kDLFloat && t.dtype.bits == 32 && nbytes >= 4) {
      float f;
      std::memcpy(&f, t.data.data(), 4);
      first = f;
    }
    std::cout << (i ? ", " : "") << "{\"name\": \"" << names[i] << "\", \"code\": " << int(t.dtype.code)
              << ", \"bits\": " << int(t.dtype.bits) << ", \"lanes\": " << t.dtype.lanes
              << ", \"device_type\": " << int(t.dev.device_type) << ", \"shape\": [";
    for (int d = 0; d < t.ndim; ++d) std::cout << (d ? ", " : "") << t.shape[d];
    std::cout << "], \"nbytes\": " << nbytes << ", \"first\": " << first << "}";
  }
  std::cout << "]}\n";
  char extra;
  CHECK(strm.Read(&extra, 1) == 0);  // consumed exactly

  std::string again;
  BytesOutStream w(&again);
  w.Write(header);
  w.Write(reserved);
  w.Write(names);
  w.Write(count);
  for (const Tensor& t : tensors) {
    w.Write(t.header);
    w.Write(t.reserved);
    w.Write(t.dev);
    w.Write(t.ndim);
    w.Write(t.dtype);
    w.WriteArray(t.shape.data(), t.shape.size());
    w.Write(static_cast<int64_t>(t.data.size()));
    w.Write(t.data.data(), t.data.size());
  }
  WriteFile(out, again);
  return 0;
}

static int B64(const char* in, const char* out) {
  std::string blob = ReadFile(in), text;
  {
    BytesOutStream sink(&text);
    Base64OutStream enc(&sink);
    // odd chunking exercises the 3-byte grouping
    for (size_t i = 0; i < blob.size(); i += 7) enc.Write(blob.data() + i, std::min<size_t>(7, blob.size() - i));
    enc.Finish();
  }
  WriteFile(out, text);
  std::string wrapped = "\n " + text.substr(0, text.size() / 2) + "\n" + text.substr(text.size() / 2);
  BytesInStream src(wrapped);
  Base64InStream dec(&src);
  dec.InitPosition();
  std::string back(blob.size(), '\0');
  CHECK(blob.empty() || dec.Read(&back[0], back.size()) == back.size());
  char extra;
  CHECK(dec.Read(&extra, 1) == 0);
  CHECK(back == blob);
  return 0;
}

static int Fp16(const char* in, const char* out) {
  std::string blob = ReadFile(in), res;
  for (size_t i = 0; i + 4 <= blob.size(); i += 4) {
    float x;
    std::memcpy(&x, blob.data() + i, 4);
    uint16_t h = __truncXfYf2__<float, uint32_t, 23, uint16_t, uint16_t, 10>(x);
    res.append(reinterpret_cast<const char*>(&h), 2);
  }
  WriteFile(out, res);
  return 0;
}

static int Fp16Ext(const char* out) {
  std::string res;
  for (uint32_t i = 0; i < 65536; ++i) {
    float x = __extendXfYf2__<uint16_t, uint16_t, 10, float, uint32_t, 23>(static_cast<uint16_t>(i));
    res.append(reinterpret_cast<const char*>(&x), 4);
  }
  WriteFile(out, res);
  return 0;
}

static int Containers() {
  std::string buf;
  BytesOutStream w(&buf);
  std::vector<std::string> vs{"a", "", "ccc"};
  std::unordered_map<std::string, std::string> um{{"k1", "v1"}, {"k2", std::string(300, 'x')}};
  std::map<int32_t, std::vector<double>> m{{1, {1.5, 2.5}}, {-4, {}}};
  std::pair<uint8_t, std::string> pr{7, "seven"};
  tvm::ffi::Array<tvm::ffi::String> fa{"x", "yz"};
  tvm::ffi::Map<tvm::ffi::String, tvm::ffi::String> fm{{"p", "q"}, {"r", "s"}};
  tvm::ffi::Array<DLDataType> fd{DLDataType{kDLFloat, 32, 1}, DLDataType{kDLInt, 8, 4}};
  w.Write(vs);
  w.Write(um);
  w.Write(m);
  w.Write(pr);
  w.Write(fa);
  w.Write(fm);
  w.Write(fd);
  // layout spot check: vector<string> = u64 count, then (u64 len, bytes) per element
  uint64_t n0;
  std::memcpy(&n0, buf.data(), 8);
  CHECK(n0 == 3);
  std::memcpy(&n0, buf.data() + 8, 8);
  CHECK(n0 == 1 && buf[16] == 'a');

  BytesInStream r(buf);
  std::vector<std::string> vs2;
  std::unordered_map<std::string, std::string> um2;
  std::map<int32_t, std::vector<double>> m2;
  std::pair<uint8_t, std::string> pr2;
  tvm::ffi::Array<tvm::ffi::String> fa2;
  tvm::ffi::Map<tvm::ffi::String, tvm::ffi::String> fm2;
  tvm::ffi::Array<DLDataType> fd2;
  CHECK(r.Read(&vs2) && vs2 == vs);
  CHECK(r.Read(&um2) && um2 == um);
  CHECK(r.Read(&m2) && m2 == m);
  CHECK(r.Read(&pr2) && pr2 == pr);
  CHECK(r.Read(&fa2) && fa2.size() == 2 && fa2[1] == "yz");
  CHECK(r.Read(&fm2) && fm2.size() == 2 && fm2["r"] == "s");
  CHECK(r.Read(&fd2) && fd2.size() == 2 && fd2[1].lanes == 4 && fd2[1].bits == 8);
  std::string tail;
  CHECK(!r.Read(&tail));  // truncated stream reports failure

  RingBuffer rb;
  std::string sent, got;
  for (int round = 0; round < 200; ++round) {
    std::string chunk(static_cast<size_t>(round * 37 % 5000), static_cast<char>('a' + round % 26));
    rb.Write(chunk.data(), chunk.size());
    sent += chunk;
    size_t take = rb.bytes_available() / 2;
    std::string part(take, '\0');
    rb.Read(&part[0], take);
    got += part;
    if (round % 3 == 0) {
      rb.WriteWithCallback([&](void* p, size_t n) { std::memset(p, 'Z', n); sent.append(n, 'Z'); return n; }, 100);
    }
  }
  while (rb.bytes_available()) {
    rb.ReadWithCallback([&](const void* p, size_t n) { got.append(static_cast<const char*>(p), n); return n; },
                        rb.bytes_available());
  }
  CHECK(got == sent);

  Arena arena;
  for (int round = 0; round < 3; ++round) {
    for (int i = 1; i < 2000; i += 13) {
      int64_t* p = arena.allocate_<int64_t>(i);
      CHECK(reinterpret_cast<uintptr_t>(p) % alignof(int64_t) == 0);
      p[0] = i;
      p[i - 1] = -i;
    }
    arena.RecycleAll();
  }
  CHECK(StartsWith("RPCSessionTimeoutError: x", "RPCSessionTimeoutError: ") && !StartsWith("ab", "abc"));
  CHECK(IsNumber("0123") && !IsNumber("") && !IsNumber("1a"));
  CHECK(Split("a,b,,c", ',').size() == 4);
  std::cout << "containers ok\n";
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  std::string mode = argv[1];
  if (mode == "params" && argc == 4) return Params(argv[2], argv[3]);
  if (mode == "b64" && argc == 4) return B64(argv[2], argv[3]);
  if (mode == "fp16" && argc == 4) return Fp16(argv[2], argv[3]);
  if (mode == "fp16ext" && argc == 3) return Fp16Ext(argv[2]);
  if (mode == "containers") return Containers();
  return 2;
}
