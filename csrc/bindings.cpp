// The only PYBIND11_MODULE of pyzsl: converts Python arguments to Array views and
// calls the ops. Arrays cross the boundary through the two standard protocols,
// __array_interface__ (numpy; torch CPU tensors via .numpy(), zero-copy) and
// __cuda_array_interface__ (torch CUDA tensors, CuPy, ...): pointer, shape, strides,
// dtype. Nothing is copied here; a strided or wrongly typed array is an error.
#include <pybind11/pybind11.h>

#include <cstring>
#include <string>

#include "bilinear_hinge/bilinear_hinge.h"
#include "common/array.h"
#include "common/cuda.h"
#include "common/parallel.h"
#include "topk/topk.h"
#include "parse_vec/parse_vec.h"  // BLI-A: parse_vec block below
#include "pcgrad/pcgrad.h"  // issue 4: pcgrad block below

namespace py = pybind11;
using namespace pyzsl;

namespace {

DType parse_typestr(const std::string& t) {
  // byte order '<' or '|' (native little-endian here); '>' is rejected as Other.
  if (t.size() < 3 || t[0] == '>') return DType::Other;
  const std::string k = t.substr(1);
  if (k == "f4") return DType::Float32;
  if (k == "f8") return DType::Float64;
  if (k == "i8") return DType::Int64;
  if (k == "i4") return DType::Int32;
  if (k == "b1") return DType::Bool;
  return DType::Other;
}

// Reads an array view from `obj`. `optional`: None gives an Array with given=false.
// `writable`: the kernel writes into it, so a read-only buffer is an error.
Array as_array(py::handle obj, const char* name, bool optional = false, bool writable = false) {
  Array a;
  a.name = name;
  if (obj.is_none()) {
    PYZSL_CHECK(optional, name, ": required, got None");
    return a;
  }
  py::dict iface;
  if (py::hasattr(obj, "__cuda_array_interface__")) {
    iface = obj.attr("__cuda_array_interface__");
    a.device = Device::CUDA;
  } else if (py::hasattr(obj, "__array_interface__")) {
    iface = obj.attr("__array_interface__");
    a.device = Device::CPU;
  } else {
    fail(name, ": expected a numpy array or a CUDA array (torch tensors go through pyzsl.ops), got ",
         std::string(py::str(py::type::of(obj).attr("__name__"))));
  }
  a.given = true;
  auto data = iface["data"].cast<py::tuple>();
  a.data = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
  PYZSL_CHECK(!(writable && data[1].cast<bool>()), name, ": is read-only but the kernel writes into it");
  a.dtype = parse_typestr(iface["typestr"].cast<std::string>());
  PYZSL_CHECK(a.dtype != DType::Other, name, ": unsupported dtype ", iface["typestr"].cast<std::string>());
  for (auto s : iface["shape"].cast<py::tuple>()) a.shape.push_back(s.cast<int64_t>());
  const int64_t item = a.dtype == DType::Bool ? 1 : (a.dtype == DType::Float32 || a.dtype == DType::Int32 ? 4 : 8);
  py::object strides = iface.contains("strides") ? py::object(iface["strides"]) : py::none();
  if (strides.is_none()) {
    a.strides.assign(a.shape.size(), 1);
    for (int64_t d = a.ndim() - 2; d >= 0; --d) a.strides[d] = a.strides[d + 1] * a.shape[d + 1];
  } else {
    for (auto s : strides.cast<py::tuple>()) {
      const int64_t bytes = s.cast<int64_t>();
      PYZSL_CHECK(bytes % item == 0, name, ": stride not a multiple of the element size");
      a.strides.push_back(bytes / item);
    }
  }
  if (a.device == Device::CUDA) {
#ifdef WITH_CUDA
    if (a.data != nullptr) {
      cudaPointerAttributes attr{};
      PYZSL_CUDA_CHECK(cudaPointerGetAttributes(&attr, a.data));
      a.device_index = attr.device;
    }
#else
    fail(name, ": is a CUDA array but pyzsl was built without CUDA support "
         "(build_info()['cuda'] is False)");
#endif
  }
  return a;
}

int cuda_device_count() {
#ifdef WITH_CUDA
  int driver = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess || driver == 0) return 0;
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

py::dict build_info() {
  py::dict d;
  d["version"] = PYZSL_VERSION;
#if defined(__clang__)
  d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  d["compiler"] = std::string("gcc ") + __VERSION__;
#else
  d["compiler"] = "unknown";
#endif
#ifdef _OPENMP
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
  d["omp_threads"] = max_threads();
#ifdef WITH_CUDA
  d["cuda"] = true;
  d["cuda_runtime"] = CUDART_VERSION;
  d["cuda_archs"] = std::string(PYZSL_CUDA_ARCHS);
#else
  d["cuda"] = false;
  d["cuda_runtime"] = py::none();
  d["cuda_archs"] = "";
#endif
  d["cuda_devices"] = cuda_device_count();
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyzsl's compiled kernels (CPU/OpenMP and CUDA); use them through pyzsl.ops";
  m.def("build_info", &build_info, "What was compiled: version, compiler, OpenMP, CUDA, archs");

  // --- bilinear_hinge ---------------------------------------------------------
  m.def(
      "hinge_tile",
      [](py::handle scores, py::handle positive, py::handle labels, py::handle class_mask,
         py::handle loss, py::handle count, py::handle best_value, py::handle best_index,
         py::handle status, int64_t col0, int64_t num_classes, double margin, bool hardest,
         bool write_grad, uintptr_t stream) {
        HingeTileArgs a;
        a.scores = as_array(scores, "scores", false, true);
        a.positive = as_array(positive, "positive");
        a.labels = as_array(labels, "labels");
        a.class_mask = as_array(class_mask, "class_mask", true);
        a.loss = as_array(loss, "loss", false, true);
        a.count = as_array(count, "count", false, true);
        a.best_value = as_array(best_value, "best_value", false, true);
        a.best_index = as_array(best_index, "best_index", false, true);
        a.status = as_array(status, "status", false, true);
        a.col0 = col0;
        a.num_classes = num_classes;
        a.margin = margin;
        a.hardest = hardest;
        a.write_grad = write_grad;
        py::gil_scoped_release nogil;
        return hinge_tile(a, stream);
      },
      py::arg("scores"), py::arg("positive"), py::arg("labels"), py::arg("class_mask"),
      py::arg("loss"), py::arg("count"), py::arg("best_value"), py::arg("best_index"),
      py::arg("status"), py::arg("col0"), py::arg("num_classes"), py::arg("margin"),
      py::arg("hardest"), py::arg("write_grad"), py::arg("stream") = 0);

  // --- topk ---------------------------------------------------------------------
  m.def(
      "topk_tile",
      [](py::handle scores, py::handle class_bias, py::handle class_mask, py::handle values,
         py::handle indices, py::handle status, int64_t col0, int64_t num_classes,
         uintptr_t stream, int threads) {
        TopkTileArgs a;
        a.scores = as_array(scores, "scores");
        a.class_bias = as_array(class_bias, "class_bias", true);
        a.class_mask = as_array(class_mask, "class_mask", true);
        a.values = as_array(values, "values", false, true);
        a.indices = as_array(indices, "indices", false, true);
        a.status = as_array(status, "status", false, true);
        a.col0 = col0;
        a.num_classes = num_classes;
        a.threads = threads;
        py::gil_scoped_release nogil;
        topk_tile(a, stream);
      },
      py::arg("scores"), py::arg("class_bias"), py::arg("class_mask"), py::arg("values"),
      py::arg("indices"), py::arg("status"), py::arg("col0"), py::arg("num_classes"),
      py::arg("stream") = 0, py::arg("threads") = 0);

  // --- further ops: one marked block each, below ----------------------------------

  // --- parse_vec (BLI-A: pyzsl/bli/io.py) -----------------------------------------
  // The text arrives as any contiguous byte buffer (bytes, mmap): no copy.
  m.def(
      "count_lines",
      [](py::buffer text, int64_t offset, int64_t limit) {
        py::buffer_info b = text.request();
        const char* p = static_cast<const char*>(b.ptr);
        const int64_t n = b.size * b.itemsize;
        py::gil_scoped_release nogil;
        return count_lines(p, n, offset, limit);
      },
      py::arg("text"), py::arg("offset") = 0, py::arg("limit") = -1);
  m.def(
      "parse_vec",
      [](py::buffer text, py::handle out, int64_t offset, int64_t first_line,
         bool skip_errors, std::string source) {
        py::buffer_info b = text.request();
        ParseVecArgs a;
        a.text = static_cast<const char*>(b.ptr);
        a.size = b.size * b.itemsize;
        a.offset = offset;
        a.first_line = first_line;
        a.out = as_array(out, "out", false, true);
        a.skip_errors = skip_errors;
        a.source = std::move(source);
        ParseVecResult r;
        {
          py::gil_scoped_release nogil;
          r = parse_vec(a);
        }
        return py::make_tuple(py::bytes(r.words), r.rows, r.skipped, r.next_offset, r.next_line,
                              r.first_error);
      },
      py::arg("text"), py::arg("out"), py::arg("offset"),
      py::arg("first_line"), py::arg("skip_errors"), py::arg("source"));
  m.def(
      "format_vec",
      [](py::handle values, py::bytes words, int64_t row0, int64_t row1, int precision) {
        FormatVecArgs a;
        a.values = as_array(values, "values");
        std::string_view w = words;
        a.words = w.data();
        a.words_size = static_cast<int64_t>(w.size());
        a.row0 = row0;
        a.row1 = row1;
        a.precision = precision;
        std::string s;
        {
          py::gil_scoped_release nogil;
          s = format_vec(a);
        }
        return py::bytes(s);
      },
      py::arg("values"), py::arg("words"), py::arg("row0"), py::arg("row1"),
      py::arg("precision") = 0);
  // --- end parse_vec ----------------------------------------------------------------

  // --- pcgrad (issue 4: pyzsl/ops/pcgrad.py) --------------------------------------
  // G arrives as a sequence of L blocks (one for a plain T×P matrix); outputs likewise.
  m.def(
      "pcgrad",
      [](py::sequence blocks, py::handle order, py::sequence out, py::handle gram,
         py::handle weights, py::handle cosine, py::handle conflicts, py::handle status,
         py::handle workspace, bool mean, uintptr_t stream) {
        PCGradArgs a;
        const size_t L = blocks.size();
        for (size_t l = 0; l < L; ++l) {
          const std::string name = L == 1 ? "G" : "G[" + std::to_string(l) + "]";
          a.blocks.push_back(as_array(blocks[l], name.c_str()));
        }
        for (size_t l = 0; l < out.size(); ++l) {
          const std::string name = out.size() == 1 ? "out" : "out[" + std::to_string(l) + "]";
          a.out.push_back(as_array(out[l], name.c_str(), false, true));
        }
        a.order = as_array(order, "order", true);
        a.gram = as_array(gram, "gram", false, true);
        a.weights = as_array(weights, "weights", true, true);
        a.cosine = as_array(cosine, "cosine", true, true);
        a.conflicts = as_array(conflicts, "conflicts", true, true);
        a.status = as_array(status, "status", false, true);
        a.workspace = as_array(workspace, "workspace", true, true);
        a.mean = mean;
        py::gil_scoped_release nogil;
        pcgrad(a, stream);
      },
      py::arg("blocks"), py::arg("order"), py::arg("out"), py::arg("gram"), py::arg("weights"),
      py::arg("cosine"), py::arg("conflicts"), py::arg("status"), py::arg("workspace"),
      py::arg("mean"), py::arg("stream") = 0);
  m.def(
      "pcgrad_workspace_bytes",
      [](int64_t T, py::sequence P, bool float64, int device_index) {
        std::vector<int64_t> cols;
        for (auto p : P) cols.push_back(p.cast<int64_t>());
        return pcgrad_workspace_bytes(T, cols, float64 ? DType::Float64 : DType::Float32, device_index);
      },
      py::arg("T"), py::arg("P"), py::arg("float64"), py::arg("device_index"));
  m.def("pcgrad_cpu_isa", &pcgrad_cpu_isa,
        "The CPU code path of pcgrad: avx512, avx2 or generic (PYZSL_PCGRAD_ISA lowers it)");
  // --- end pcgrad -----------------------------------------------------------------------
}
