// pybind11 module fastjl._C: the compiled half of fastjl.
//
// Deliberately torch-free: tensors cross this boundary as raw addresses (Python ints from
// tensor.data_ptr()) plus sizes and codes, and streams as ints (torch's
// Stream.cuda_stream).  So the module does not depend on the torch version or its ABI,
// and the build never needs torch.  The Python side (fastjl) checks dtype, device,
// contiguity and size of the tensors before passing their addresses here.
//
// Two builds (CMakeLists.txt, option FASTJL_CUDA): with CUDA (FASTJL_WITH_CUDA defined) the
// module has every entry point below; without it (no nvcc at install) only the host ones:
// the sparse kinds' CPU product, the reference blocks, the launch plans and the CPU
// emulations.  The CUDA-only entry points are marked "CUDA build only".
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <tuple>

#include "block_args.h"
#include "build_config.h"
#include "linear_args.h"
#include "philox.cuh"
#include "project_args.h"
#include "project_plan.cuh"
#include "sparse_chunk_args.h"
#include "sparse_cpu.h"

namespace py = pybind11;

namespace fastjl {
void bind_wgmma(py::module_& m);  // wgmma_bindings.cpp: the sm_90a kernel's entry points
}

namespace {

std::tuple<uint32_t, uint32_t, uint32_t, uint32_t> philox_py(std::array<uint32_t, 4> counter,
                                                             std::array<uint32_t, 2> key) {
  const fastjl::U32x4 r =
      fastjl::philox4x32_10({counter[0], counter[1], counter[2], counter[3]}, key[0], key[1]);
  return {r.x, r.y, r.z, r.w};
}

fastjl::BlockArgs block_args(uint64_t seed, int kind, int64_t row0, int64_t nrows, int64_t col0,
                             int64_t ncols, uintptr_t out_ptr, int dtype_code) {
  return fastjl::BlockArgs{seed, kind, row0, nrows, col0, ncols, out_ptr, dtype_code};
}

fastjl::proj::Plan project_plan(int64_t batch, int64_t dim, int64_t proj_dim, int64_t num_sms,
                                const char* op) {
  fastjl::validate_project_sizes(batch, dim, proj_dim, op);
  return fastjl::proj::make_plan(batch, dim, proj_dim, num_sms, op);
}

fastjl::LinearArgs linear_args(uintptr_t a_ptr, uintptr_t g_ptr, int dtype, int64_t batch,
                               int64_t tokens, int64_t d_in, int64_t d_out, int64_t stride_ab,
                               int64_t stride_at, int64_t stride_ai, int64_t stride_gb,
                               int64_t stride_gt, int64_t stride_go, uintptr_t out_ptr,
                               int64_t proj_dim, int64_t stride_ob, int64_t stride_ok,
                               uint64_t seed, int kind, int64_t offset, bool bias) {
  return fastjl::LinearArgs{a_ptr,     g_ptr,     dtype,     batch,     tokens,    d_in,
                            d_out,     stride_ab, stride_at, stride_ai, stride_gb, stride_gt,
                            stride_go, out_ptr,   proj_dim,  stride_ob, stride_ok, seed,
                            kind,      offset,    bias};
}

py::dict build_info() {
  py::dict info;
  info["version"] = FASTJL_VERSION;
  info["spec_version"] = 1;
#ifdef FASTJL_WITH_CUDA
  info["cuda"] = true;
  info["cuda_version"] = fastjl::compiled_cudart_version();  // CUDART_VERSION, e.g. 13000
  info["nvcc_version"] = FASTJL_CUDA_COMPILER_VERSION;
  info["cudart"] = "static";
#else
  info["cuda"] = false;  // host half only: no kernels, no CUDA runtime
  info["cuda_version"] = py::none();
  info["nvcc_version"] = py::none();
  info["cudart"] = py::none();
#endif
  info["archs"] = FASTJL_CUDA_ARCHS;  // "" without CUDA
  info["build_type"] = FASTJL_BUILD_TYPE;
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastjl compiled kernels (raw pointers only; no torch dependency)";

  m.def("philox4x32_10", &philox_py, py::arg("counter"), py::arg("key"),
        "Philox4x32-10 of a 4-word counter under a 2-word key (uint32 words).");

  // The GIL is released: filling a large block takes a while, and the arguments are plain
  // integers that need no Python objects once converted.
  m.def(
      "host_matrix_block",
      [](uint64_t seed, int kind, int64_t row0, int64_t nrows, int64_t col0, int64_t ncols,
         uintptr_t out_ptr, int dtype_code) {
        fastjl::host_matrix_block(
            block_args(seed, kind, row0, nrows, col0, ncols, out_ptr, dtype_code));
      },
      py::arg("seed"), py::arg("kind"), py::arg("row0"), py::arg("nrows"), py::arg("col0"),
      py::arg("ncols"), py::arg("out_ptr"), py::arg("dtype_code"),
      py::call_guard<py::gil_scoped_release>(),
      "Write P[row0:row0+nrows, col0:col0+ncols] row-major to host memory at out_ptr.\n"
      "kind: 0 rademacher, 1 gaussian; dtype_code: 0 float32, 3 float64.");

  // Sparse kinds on the CPU (sparse_cpu.cpp): out = x_block @ P_block from the block's packed
  // structure; single-threaded, GIL released (the Python CPU workers run blocks in parallel).
  m.def(
      "host_sparse_block",
      [](uintptr_t x_ptr, int x_dtype, int64_t batch, int64_t rows, int64_t stride_xb,
         uintptr_t packed_ptr, uintptr_t kept_ptr, int64_t n_kept, int sparsity, uintptr_t out_ptr,
         int out_dtype, int64_t proj_dim, int64_t stride_ob) {
        fastjl::host_sparse_block(fastjl::SparseBlockArgs{x_ptr, x_dtype, batch, rows, stride_xb,
                                                          packed_ptr, kept_ptr, n_kept, sparsity,
                                                          out_ptr, out_dtype, proj_dim, stride_ob});
      },
      py::arg("x_ptr"), py::arg("x_dtype"), py::arg("batch"), py::arg("rows"),
      py::arg("stride_xb"), py::arg("packed_ptr"), py::arg("kept_ptr"), py::arg("n_kept"),
      py::arg("sparsity"), py::arg("out_ptr"), py::arg("out_dtype"), py::arg("proj_dim"),
      py::arg("stride_ob"), py::call_guard<py::gil_scoped_release>(),
      "out[b, :] = x[b, :rows] @ P_block (overwritten) for a sparse kind's block, from its packed\n"
      "structure: uint32 column | sign << 31, s per used row; kept: int32 used rows (grass) or 0.\n"
      "dtype codes: 0 float32, 1 float16, 2 bfloat16, 3 float64; out float64 for float64 x.");

#ifdef FASTJL_WITH_CUDA  // CUDA build only
  m.def(
      "device_matrix_block",
      [](uint64_t seed, int kind, int64_t row0, int64_t nrows, int64_t col0, int64_t ncols,
         uintptr_t out_ptr, int dtype_code, uintptr_t stream) {
        fastjl::device_matrix_block(
            block_args(seed, kind, row0, nrows, col0, ncols, out_ptr, dtype_code), stream);
      },
      py::arg("seed"), py::arg("kind"), py::arg("row0"), py::arg("nrows"), py::arg("col0"),
      py::arg("ncols"), py::arg("out_ptr"), py::arg("dtype_code"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>(),
      "Same as host_matrix_block into CUDA device memory, launched on `stream` (an int\n"
      "cudaStream_t, e.g. torch.cuda.current_stream().cuda_stream); asynchronous.");
#endif

  // ---- projection (project_kernel.cu) ---------------------------------------------
  // Argument order: x (pointer, dtype code, B, D, element strides), out (pointer, K,
  // element strides; float32), seed, kind, offset, then the launch resources.
  // dtype codes: 0 float32, 1 float16, 2 bfloat16.  kind: 0 rademacher, 1 gaussian.
#ifdef FASTJL_WITH_CUDA  // CUDA build only
  m.def(
      "project",
      [](uintptr_t x_ptr, int x_dtype, int64_t batch, int64_t dim, int64_t stride_xb,
         int64_t stride_xd, uintptr_t out_ptr, int64_t proj_dim, int64_t stride_ob,
         int64_t stride_ok, uint64_t seed, int kind, int64_t offset, uintptr_t workspace_ptr,
         int64_t workspace_bytes, int64_t num_sms, uintptr_t stream) {
        fastjl::project_device(
            fastjl::project_args(x_ptr, x_dtype, batch, dim, stride_xb, stride_xd, out_ptr,
                                 proj_dim, stride_ob, stride_ok, seed, kind, offset),
            workspace_ptr, workspace_bytes, num_sms, stream);
      },
      py::arg("x_ptr"), py::arg("x_dtype"), py::arg("B"), py::arg("D"), py::arg("stride_xb"),
      py::arg("stride_xd"), py::arg("out_ptr"), py::arg("K"), py::arg("stride_ob"),
      py::arg("stride_ok"), py::arg("seed"), py::arg("kind"), py::arg("offset"),
      py::arg("workspace_ptr"), py::arg("workspace_bytes"), py::arg("num_sms"),
      py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
      "out[b, k] = sum_d x[b, d] * P[offset + d, k] on the GPU (tensor cores, P generated\n"
      "on the fly from spec v1).  Device pointers; element strides; out is float32 and\n"
      "fully overwritten.  workspace: device memory of project_workspace_bytes(B, D, K,\n"
      "num_sms) bytes (0/0 when that is 0); num_sms: the GPU's multiprocessor count, which\n"
      "fixes the launch plan.  Launched on `stream` (an int cudaStream_t); asynchronous.\n"
      "Raises ValueError for bad arguments, RuntimeError('fastjl._C.project: <CUDA error>').");
#endif

  m.def(
      "project_workspace_bytes",
      [](int64_t batch, int64_t dim, int64_t proj_dim, int64_t num_sms) {
        return project_plan(batch, dim, proj_dim, num_sms, "fastjl._C.project_workspace_bytes")
            .workspace_bytes;
      },
      py::arg("B"), py::arg("D"), py::arg("K"), py::arg("num_sms"),
      "Bytes of device workspace project() needs for this shape on a GPU with num_sms SMs\n"
      "(float32 partial sums of the D-splits; 0 when D is not split).");

  m.def(
      "project_plan",
      [](int64_t batch, int64_t dim, int64_t proj_dim, int64_t num_sms) {
        const auto p = project_plan(batch, dim, proj_dim, num_sms, "fastjl._C.project_plan");
        py::dict d;
        d["block_b"] = p.block_b;
        d["block_d"] = fastjl::proj::kBlockD;
        d["block_n"] = fastjl::proj::kBlockN;
        d["tiles_b"] = p.tiles_b;
        d["tiles_n"] = p.tiles_n;
        d["splits"] = p.splits;
        d["d_per_split"] = p.d_per_split;
        d["workspace_bytes"] = p.workspace_bytes;
        return d;
      },
      py::arg("B"), py::arg("D"), py::arg("K"), py::arg("num_sms"),
      "The launch plan of project() (tile sizes, grid, D-splits, workspace), for tests.");

  m.def(
      "host_emulate_project",
      [](uintptr_t x_ptr, int x_dtype, int64_t batch, int64_t dim, int64_t stride_xb,
         int64_t stride_xd, uintptr_t out_ptr, int64_t proj_dim, int64_t stride_ob,
         int64_t stride_ok, uint64_t seed, int kind, int64_t offset, int64_t num_sms) {
        const auto a = fastjl::project_args(x_ptr, x_dtype, batch, dim, stride_xb, stride_xd,
                                            out_ptr, proj_dim, stride_ob, stride_ok, seed, kind,
                                            offset);
        fastjl::host_emulate_project(a, num_sms);
        return fastjl::use_vector_loads(a);
      },
      py::arg("x_ptr"), py::arg("x_dtype"), py::arg("B"), py::arg("D"), py::arg("stride_xb"),
      py::arg("stride_xd"), py::arg("out_ptr"), py::arg("K"), py::arg("stride_ob"),
      py::arg("stride_ok"), py::arg("seed"), py::arg("kind"), py::arg("offset"),
      py::arg("num_sms"), py::call_guard<py::gil_scoped_release>(),
      "project() emulated on the CPU, lane by lane, on HOST pointers: the kernel's plan,\n"
      "index maps, tile fetch and P generation, with ldmatrix/mma modelled from the PTX\n"
      "ISA.  Slow; for tests on small shapes.  Returns whether the vector (cp.async) path\n"
      "was taken.");

  // ---- projection of Linear-layer gradients (linear_kernel.cu) ------------------------
  // Argument order: a, g (pointers, one dtype code, B, T, d_in, d_out, element strides of
  // a then g), out (pointer, K, element strides; float32), seed, kind, offset, bias, then
  // the launch resources as for project.
#ifdef FASTJL_WITH_CUDA  // CUDA build only
  m.def(
      "project_linear",
      [](uintptr_t a_ptr, uintptr_t g_ptr, int dtype, int64_t batch, int64_t tokens,
         int64_t d_in, int64_t d_out, int64_t stride_ab, int64_t stride_at, int64_t stride_ai,
         int64_t stride_gb, int64_t stride_gt, int64_t stride_go, uintptr_t out_ptr,
         int64_t proj_dim, int64_t stride_ob, int64_t stride_ok, uint64_t seed, int kind,
         int64_t offset, bool bias, uintptr_t workspace_ptr, int64_t workspace_bytes,
         int64_t num_sms, uintptr_t stream) {
        fastjl::project_linear_device(
            linear_args(a_ptr, g_ptr, dtype, batch, tokens, d_in, d_out, stride_ab, stride_at,
                        stride_ai, stride_gb, stride_gt, stride_go, out_ptr, proj_dim, stride_ob,
                        stride_ok, seed, kind, offset, bias),
            workspace_ptr, workspace_bytes, num_sms, stream);
      },
      py::arg("a_ptr"), py::arg("g_ptr"), py::arg("dtype"), py::arg("B"), py::arg("T"),
      py::arg("d_in"), py::arg("d_out"), py::arg("stride_ab"), py::arg("stride_at"),
      py::arg("stride_ai"), py::arg("stride_gb"), py::arg("stride_gt"), py::arg("stride_go"),
      py::arg("out_ptr"), py::arg("K"), py::arg("stride_ob"), py::arg("stride_ok"),
      py::arg("seed"), py::arg("kind"), py::arg("offset"), py::arg("bias"),
      py::arg("workspace_ptr"), py::arg("workspace_bytes"), py::arg("num_sms"),
      py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
      "out = x @ P[offset : offset + D, :K] for x = [G.flatten(1)] (+ [g.sum(1)] if bias),\n"
      "G[b] = sum_t g[b, t, :] a[b, t, :]^T (d_out x d_in), D = d_out*d_in (+ d_out), on the\n"
      "GPU without forming G in global memory.  a (B, T, d_in) and g (B, T, d_out) share the\n"
      "dtype code (0 float32, 1 float16, 2 bfloat16); device pointers, element strides; out\n"
      "is float32 and fully overwritten.  workspace: project_linear_workspace_bytes(...)\n"
      "bytes of device memory (0/0 when that is 0).  Asynchronous on `stream`.\n"
      "Raises ValueError for bad arguments, RuntimeError('fastjl._C.project_linear: ...').");
#endif

  m.def(
      "project_linear_workspace_bytes",
      [](int64_t batch, int64_t d_in, int64_t d_out, bool bias, int64_t proj_dim,
         int64_t num_sms) {
        constexpr const char* op = "fastjl._C.project_linear_workspace_bytes";
        return project_plan(batch, fastjl::linear_dim(d_in, d_out, bias, op), proj_dim, num_sms,
                            op)
            .workspace_bytes;
      },
      py::arg("B"), py::arg("d_in"), py::arg("d_out"), py::arg("bias"), py::arg("K"),
      py::arg("num_sms"),
      "Bytes of device workspace project_linear() needs (that of project() for\n"
      "D = d_out*d_in (+ d_out): the same launch plan).");

  m.def(
      "host_emulate_project_linear",
      [](uintptr_t a_ptr, uintptr_t g_ptr, int dtype, int64_t batch, int64_t tokens,
         int64_t d_in, int64_t d_out, int64_t stride_ab, int64_t stride_at, int64_t stride_ai,
         int64_t stride_gb, int64_t stride_gt, int64_t stride_go, uintptr_t out_ptr,
         int64_t proj_dim, int64_t stride_ob, int64_t stride_ok, uint64_t seed, int kind,
         int64_t offset, bool bias, int64_t num_sms) {
        fastjl::host_emulate_project_linear(
            linear_args(a_ptr, g_ptr, dtype, batch, tokens, d_in, d_out, stride_ab, stride_at,
                        stride_ai, stride_gb, stride_gt, stride_go, out_ptr, proj_dim, stride_ob,
                        stride_ok, seed, kind, offset, bias),
            num_sms);
      },
      py::arg("a_ptr"), py::arg("g_ptr"), py::arg("dtype"), py::arg("B"), py::arg("T"),
      py::arg("d_in"), py::arg("d_out"), py::arg("stride_ab"), py::arg("stride_at"),
      py::arg("stride_ai"), py::arg("stride_gb"), py::arg("stride_gt"), py::arg("stride_go"),
      py::arg("out_ptr"), py::arg("K"), py::arg("stride_ob"), py::arg("stride_ok"),
      py::arg("seed"), py::arg("kind"), py::arg("offset"), py::arg("bias"), py::arg("num_sms"),
      py::call_guard<py::gil_scoped_release>(),
      "project_linear() emulated on the CPU, lane by lane, on HOST pointers: the kernel's\n"
      "plan, gradient-tile producer, P generation and fragment maps, with ldmatrix/mma\n"
      "modelled from the PTX ISA.  Slow; for tests on small shapes.");

  // ---- sparse kinds on the GPU (sparse_kernel.cu; CPU emulation: sparse_emulate.cpp) ------
  // Argument order: x (pointer, dtype code, B, rows, element strides), the chunk structure
  // (entries, col_ptr pointers, col_ptr row stride, chunks, sparsity, nonzeros per chunk), out (pointer, width,
  // element strides; float32), batch_rows (2 or 4 for float32 x, 4 or 8 for 16-bit), then the
  // launch resources.
#ifdef FASTJL_WITH_CUDA  // CUDA build only
  m.def(
      "project_sparse",
      [](uintptr_t x_ptr, int x_dtype, int64_t batch, int64_t rows, int64_t stride_xb,
         int64_t stride_xd, uintptr_t entries_ptr, uintptr_t col_ptr_ptr, int64_t ptr_stride,
         int64_t chunks, int sparsity, int chunk_nonzeros, uintptr_t out_ptr, int64_t width,
         int64_t stride_ob,
         int64_t stride_ok, int batch_rows, uintptr_t workspace_ptr, int64_t workspace_bytes,
         int64_t num_sms, uintptr_t stream) {
        fastjl::sparse::sparse_project_device(
            fastjl::sparse::SparseChunkArgs{x_ptr, x_dtype, batch, rows, stride_xb, stride_xd,
                                            entries_ptr, col_ptr_ptr, ptr_stride, chunks,
                                            sparsity, chunk_nonzeros, out_ptr, width,
                                            stride_ob, stride_ok},
            batch_rows, workspace_ptr, workspace_bytes, num_sms, stream);
      },
      py::arg("x_ptr"), py::arg("x_dtype"), py::arg("B"), py::arg("rows"), py::arg("stride_xb"),
      py::arg("stride_xd"), py::arg("entries_ptr"), py::arg("col_ptr_ptr"),
      py::arg("ptr_stride"), py::arg("chunks"), py::arg("sparsity"), py::arg("chunk_nonzeros"),
      py::arg("out_ptr"),
      py::arg("width"), py::arg("stride_ob"), py::arg("stride_ok"), py::arg("batch_rows"),
      py::arg("workspace_ptr"), py::arg("workspace_bytes"), py::arg("num_sms"),
      py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
      "out = x @ P for a sparse kind (sjlt, grass) from P's chunk structure\n"
      "(fastjl/_backends/sparse_chunks.py): entries int16 (chunks, chunk_nonzeros: 4096, 8192\n"
      "or 16384, at most 4096 rows a chunk), col_ptr int16\n"
      "(chunks, ptr_stride).  Device pointers; out float32, fully overwritten; no atomics.\n"
      "workspace: project_sparse_workspace_bytes(...) bytes (0/0 when that is 0).\n"
      "Asynchronous on `stream`.  ValueError for bad arguments.");
#endif

  m.def(
      "project_sparse_workspace_bytes",
      [](int64_t batch, int64_t chunks, int64_t width, int64_t num_sms, int batch_rows) {
        return fastjl::sparse::make_sparse_plan(batch, chunks, width, num_sms, batch_rows,
                                                "fastjl._C.project_sparse_workspace_bytes")
            .workspace_bytes;
      },
      py::arg("B"), py::arg("chunks"), py::arg("width"), py::arg("num_sms"),
      py::arg("batch_rows"), "Bytes of device workspace project_sparse() needs.");

  m.def(
      "project_sparse_plan",
      [](int64_t batch, int64_t chunks, int64_t width, int64_t num_sms, int batch_rows) {
        const auto p = fastjl::sparse::make_sparse_plan(batch, chunks, width, num_sms,
                                                        batch_rows, "fastjl._C.project_sparse_plan");
        py::dict d;
        d["tiles_k"] = p.tiles_k;
        d["tiles_b"] = p.tiles_b;
        d["splits"] = p.splits;
        d["chunks_per_split"] = p.chunks_per_split;
        d["workspace_bytes"] = p.workspace_bytes;
        return d;
      },
      py::arg("B"), py::arg("chunks"), py::arg("width"), py::arg("num_sms"),
      py::arg("batch_rows"), "The launch plan of project_sparse() (grid, splits), for tests.");

  m.def("project_sparse_smem_bytes", &fastjl::sparse::sparse_smem_bytes, py::arg("x_dtype"),
        py::arg("batch_rows"), py::arg("chunk_nonzeros"),
        "Dynamic shared memory (bytes) of project_sparse's kernel for an x dtype code,\n"
        "batch_rows and chunk_nonzeros; the GPU's opt-in limit must allow it.");

  m.def(
      "host_emulate_project_sparse",
      [](uintptr_t x_ptr, int x_dtype, int64_t batch, int64_t rows, int64_t stride_xb,
         int64_t stride_xd, uintptr_t entries_ptr, uintptr_t col_ptr_ptr, int64_t ptr_stride,
         int64_t chunks, int sparsity, int chunk_nonzeros, uintptr_t out_ptr, int64_t width,
         int64_t stride_ob,
         int64_t stride_ok, int batch_rows, int64_t num_sms) {
        return fastjl::sparse::host_emulate_sparse_project(
            fastjl::sparse::SparseChunkArgs{x_ptr, x_dtype, batch, rows, stride_xb, stride_xd,
                                            entries_ptr, col_ptr_ptr, ptr_stride, chunks,
                                            sparsity, chunk_nonzeros, out_ptr, width,
                                            stride_ob, stride_ok},
            batch_rows, num_sms);
      },
      py::arg("x_ptr"), py::arg("x_dtype"), py::arg("B"), py::arg("rows"), py::arg("stride_xb"),
      py::arg("stride_xd"), py::arg("entries_ptr"), py::arg("col_ptr_ptr"),
      py::arg("ptr_stride"), py::arg("chunks"), py::arg("sparsity"), py::arg("chunk_nonzeros"),
      py::arg("out_ptr"),
      py::arg("width"), py::arg("stride_ob"), py::arg("stride_ok"), py::arg("batch_rows"),
      py::arg("num_sms"), py::call_guard<py::gil_scoped_release>(),
      "project_sparse() emulated on the CPU on HOST pointers: the kernel's plan, staging and\n"
      "per-thread column sums (sparse_chunk.cuh), thread by thread.  Returns whether the\n"
      "vector (cp.async) staging path was taken.");

  m.def("build_info", &build_info,
        "Facts about this build (versions, CUDA archs; \"cuda\": False for the host-only build).");

  fastjl::bind_wgmma(m);  // project_sm90, wgmma_host_stage
}
