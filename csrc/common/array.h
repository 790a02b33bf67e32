// A non-owning view of a caller's buffer (numpy array, torch CPU or CUDA tensor):
// pointer, shape, strides, dtype and device. The extension never allocates what it
// returns: outputs are views too, allocated by the Python wrapper on the right device.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "common/check.h"

namespace pyzsl {

enum class DType { Float32, Float64, Int64, Int32, Bool, Other };
enum class Device { CPU, CUDA };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Int64: return "int64";
    case DType::Int32: return "int32";
    case DType::Bool: return "bool";
    default: return "an unsupported dtype";
  }
}

struct Array {
  std::string name;               // argument name, for error messages
  void* data = nullptr;           // nullptr with ndim 0 and empty() == true: "not given"
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;   // in elements
  DType dtype = DType::Other;
  Device device = Device::CPU;
  int device_index = -1;
  bool given = false;             // false for an optional argument passed as None

  int64_t ndim() const { return static_cast<int64_t>(shape.size()); }
  int64_t size(int d) const { return shape.at(d < 0 ? d + ndim() : d); }
  int64_t numel() const {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
  }
  bool contiguous() const {
    int64_t expect = 1;
    for (int64_t d = ndim() - 1; d >= 0; --d) {
      if (shape[d] != 1 && strides[d] != expect) return false;
      expect *= shape[d];
    }
    return true;
  }
  template <typename T> T* ptr() const { return static_cast<T*>(data); }
};

// --- validation helpers: every message names the argument --------------------

inline void require_dtype(const Array& a, DType t) {
  PYZSL_CHECK(a.dtype == t, a.name, ": expected ", dtype_name(t), ", got ", dtype_name(a.dtype));
}

inline void require_float(const Array& a) {
  PYZSL_CHECK(a.dtype == DType::Float32 || a.dtype == DType::Float64, a.name,
              ": expected float32 or float64, got ", dtype_name(a.dtype));
}

inline void require_shape(const Array& a, std::initializer_list<int64_t> shape) {
  bool ok = a.ndim() == static_cast<int64_t>(shape.size());
  int d = 0;
  for (auto s : shape) {
    if (!ok) break;
    if (s >= 0 && a.shape[d] != s) ok = false;
    ++d;
  }
  if (!ok) {
    std::string want = "(", got = "(";
    for (auto s : shape) want += (s < 0 ? std::string("*") : std::to_string(s)) + ",";
    for (auto s : a.shape) got += std::to_string(s) + ",";
    fail(a.name, ": expected shape ", want, ") got ", got, ")");
  }
}

inline void require_contiguous(const Array& a) {
  PYZSL_CHECK(a.contiguous(), a.name, ": must be C-contiguous (pass .contiguous(); pyzsl never copies silently)");
}

inline void require_same_device(const Array& a, const Array& b) {
  // an empty CUDA array has no data pointer to ask for its device (index -1): any index
  const bool index_ok = a.device_index == b.device_index || a.device_index < 0 || b.device_index < 0;
  PYZSL_CHECK(a.device == b.device && index_ok, a.name, " and ", b.name, " are on different devices");
}

inline void require_same_dtype(const Array& a, const Array& b) {
  PYZSL_CHECK(a.dtype == b.dtype, a.name, " (", dtype_name(a.dtype), ") and ", b.name, " (",
              dtype_name(b.dtype), ") must have the same dtype");
}

}  // namespace pyzsl
