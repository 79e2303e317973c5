#!/usr/bin/env bash
# One-command GPU check of fastjl (CUDA and Triton kernels) for a lent GPU, from a clean checkout.
#
#   bash bench/gpu_check.sh            # logs under $OUT (default /tmp/gpu-check-out)
#
# Stages run in order of value; each has its own time limit and log, and a failing stage never
# stops the next.  The whole script stops starting stages after GPU_CHECK_BUDGET_S seconds
# (default 520), so it ends inside a device call of timeout_s 570, leaving ~5 of a 15-minute
# lease for one follow-up.  A follow-up run can name
# its stages, GPU_CHECK_ONLY=env,build,pytest_gpu,... (the names in summary.txt), and the tests
# of the pytest_gpu stage, GPU_TESTS="tests/test_a.py tests/test_b.py".  At most 8 files land in
# $OUT (the device tool returns 8).  Without a GPU every GPU stage reports its absence and the
# CPU stages (build, compile reports) still run: that is the dry run CI-class machines can do.
#
# Baseline: if .base/ holds an older tree of this repository (see the base_build stage), its
# CUDA kernel is built and timed beside the current one (before/after on one card).
#
# Peers: if .peers/fast_jl holds TRAK's fast_jl source, or .peers/sjlt-*.tar.gz the sjlt
# package's sdist (see bench/README.md), each is built in the background during our build and
# benchmarked beside fastjl.  Stages run in four parts, in order of value for the next run:
# (1) the kernels changed since the last GPU run (every instantiation, the sanitizers, their
# tests: GPU_TESTS_FIRST), (2) before/after on one card and Nsight Compute, (3) the issues'
# other target rows (fast_jl, float32, sparse against sjlt, gaussian), (4) the rest of the GPU
# suite, precision, trak_core on GPT-2 small, and the compile-bound self-check and Triton
# suites with the time that is left.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 CUDA_MODULE_LOADING=LAZY
SUM=$OUT/summary.txt; : > "$SUM"
DEADLINE=$((SECONDS + ${GPU_CHECK_BUDGET_S:-520}))
HAVE_GPU=$(nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
stage() {  # stage NAME LIMIT_S LOG CMD   (the limit shrinks to what is left before DEADLINE)
  local name=$1 limit=$2 log=$3; shift 3
  if [ -n "${GPU_CHECK_ONLY:-}" ] && [[ ",$GPU_CHECK_ONLY," != *",$name,"* ]]; then return; fi
  local t0=$SECONDS left=$((DEADLINE - SECONDS))
  (( left < limit )) && limit=$left
  if (( limit < 10 )); then echo "$name SKIPPED (budget spent)" | tee -a "$SUM"; return; fi
  echo "===== $name (limit ${limit}s) =====" >> "$log"
  timeout -k 5 "$limit" bash -c "$*" >> "$log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s" | tee -a "$SUM"
}
gpu_stage() {  # like stage, but reports "no GPU" instead of running without one
  if [ -n "${GPU_CHECK_ONLY:-}" ] && [[ ",$GPU_CHECK_ONLY," != *",$1,"* ]]; then return; fi
  if [ "$HAVE_GPU" = 1 ]; then stage "$@"; else echo "$1 SKIPPED (no GPU: nvidia-smi finds none)" | tee -a "$SUM"; fi
}
NPROC=$(nproc)
PAR16=$(python3 -c "import xdist" 2>/dev/null && echo "-n $NPROC")  # one pytest worker per core
# per test, shorter than the stages' limits, so that a hanging test is named in the log
TMO=$(python3 -c "import pytest_timeout" 2>/dev/null && echo "--timeout 80")

# 0. environment; fast_jl (peer) builds in the background while fastjl._C builds
L0=$OUT/0_env_build.log
stage env 20 "$L0" 'nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv; nvcc --version | tail -2; nproc;
  python3 -c "import torch, triton, numpy; print(\"torch\", torch.__version__, torch.version.cuda, \"triton\", triton.__version__, \"numpy\", numpy.__version__)";
  python3 -c "import cupy; print(\"cupy\", cupy.__version__)"; command -v compute-sanitizer; git log -1 --oneline 2>/dev/null || true'
if [ -d .peers/fast_jl ] && [ "$HAVE_GPU" = 1 ]; then
  (MAX_JOBS=8 timeout 200 python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/peers .peers/fast_jl \
     > /tmp/fast_jl_build.log 2>&1; echo "fast_jl build rc=$?" >> /tmp/fast_jl_build.log) &
  PEER_PID=$!
fi
SJLT_SDIST=$(ls .peers/sjlt-*.tar.gz 2>/dev/null | head -1)
if [ -n "$SJLT_SDIST" ] && [ "$HAVE_GPU" = 1 ]; then
  # its own GPU's architecture only: built for every arch it outran 200 s beside our build (run5)
  ARCH_LIST=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1)
  (TORCH_CUDA_ARCH_LIST=$ARCH_LIST MAX_JOBS=6 timeout 300 python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/peers_sjlt "$SJLT_SDIST" \
     > /tmp/sjlt_build.log 2>&1; echo "sjlt build rc=$?" >> /tmp/sjlt_build.log) &
  SJLT_PID=$!
fi
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
# On the GPU: its own architecture only (fast).  Without one (a dry run): the project's default
# list, so the dry run leaves the in-tree fastjl._C as complete as `pip install -e .` made it.
ARCHS=${FASTJL_CUDA_ARCHS:-$( [ "$HAVE_GPU" = 1 ] && echo 90-real )}
cmake_build() {  # cmake_build SRC BUILD_DIR VERSION: the command building SRC's fastjl._C into SRC/fastjl
  echo "rm -rf $2; cmake -S $1 -B $2 -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_COMPILER=$NVCC ${ARCHS:+-DCMAKE_CUDA_ARCHITECTURES=$ARCHS} -DCMAKE_LIBRARY_OUTPUT_DIRECTORY=$PWD/$1/fastjl \
    -DFASTJL_VERSION=$3 -DPython_EXECUTABLE=\$(command -v python3) -Dpybind11_DIR=\$(python3 -m pybind11 --cmakedir) \
    -DCMAKE_CUDA_FLAGS='-Xptxas=-v -lineinfo' && cmake --build $2 -j $NPROC"
}
stage build 150 "$L0" "$(cmake_build . /tmp/fjl-build gpu-check) &&
  python3 -c 'import fastjl, fastjl._C as C; print(C.build_info()); print(fastjl.backends())'"
# Before/after on the same card in one run (issue 12): if .base/ holds an older tree of this
# repository (plain files, e.g. `mkdir .base && git archive REV | tar -x -C .base`, carried
# beside .peers), its fastjl._C is built for this GPU here and its CUDA rows timed in part 2.
HAVE_BASE=$([ -f .base/CMakeLists.txt ] && echo 1 || echo 0)
[ "$HAVE_BASE" = 1 ] && gpu_stage base_build 90 "$L0" "$(cmake_build .base /tmp/fjl-base-build gpu-check-base)"

# The stages run in four parts, in order of value for the next run (bench/NOTES.md, "Next lent
# GPU"); run 5's durations (H100, 16 cores) in brackets, ~420 s for parts 1-3.
# 1. the kernels changed since the last GPU run, before anything is timed: every CUDA kernel
#    instantiation once (no torch in the process) [2 s], compute-sanitizer on tiny shapes
#    (out-of-bounds addresses, races, barrier misuse) [12 s], and the GPU tests of the changed
#    kernels (GPU_TESTS_FIRST; part 4 runs the rest of the suite)
L1=$OUT/1_correctness.log
# The sparse kernel's cases: structures and references built with torch on the CPU [~5 s], so
# that the smoke and sanitizer runs stay torch-free (since stop 25: the sparse kernel had no
# sanitizer run before).
SPARSE_CASES=/tmp/fastjl_sparse_cases.npz
gpu_stage sparse_cases 40 "$L1" "PYTHONPATH=$PWD python3 bench/gpu_smoke.py --write-sparse-cases $SPARSE_CASES"
SPARSE_ARG=$([ -f "$SPARSE_CASES" ] && echo "--sparse-cases $SPARSE_CASES")
gpu_stage smoke 40 "$L1" "CUDA_LAUNCH_BLOCKING=1 python3 bench/gpu_smoke.py $SPARSE_ARG"
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
L3=$OUT/3_sanitizer.log
gpu_stage racecheck 60 "$L3" "$CS --tool racecheck --racecheck-report analysis --kernel-name kns=fastjl --print-limit 20 --error-exitcode 9 python3 bench/gpu_smoke.py --tiny $SPARSE_ARG"
gpu_stage memcheck 40 "$L3" "$CS --tool memcheck --kernel-name kns=fastjl --print-limit 20 --error-exitcode 9 python3 bench/gpu_smoke.py --tiny $SPARSE_ARG"
gpu_stage synccheck 30 "$L3" "$CS --tool synccheck --kernel-name kns=fastjl --error-exitcode 9 python3 bench/gpu_smoke.py --tiny $SPARSE_ARG"
GPU_TESTS_FIRST=${GPU_TESTS_FIRST:-tests/test_cuda_backend.py tests/test_cuda_wgmma.py tests/test_cuda_linear.py tests/test_cuda_sparse.py}
PYTEST_GPU="python3 -m pytest -m gpu -q -rfE --durations=15 $PAR16 $TMO -p no:cacheprovider"
gpu_stage pytest_changed 90 "$L1" "$PYTEST_GPU $GPU_TESTS_FIRST"

# 2. the questions the last static work left open: the CUDA rows before and after on this card
#    (mma.sync [17 s], wgmma [12 s], the .base tree's dense [~30 s] and sparse [~10 s]), then Nsight Compute on one
#    launch of each kernel whose limiter is not known (the CUDA sparse kernel, the CUDA dense
#    kernels against Triton's: issue slots, shared-memory and L2 throughput, stall reasons)
L2=$OUT/2_bench.log
export PYTHONPATH=$PWD:/tmp/peers
# B = 64: the largest batch "auto" still sends to Triton on an H100 (its routing was set from run
# 7, before stops 25-28 cut the CUDA kernels' B64 step to ~4.7 instructions per MMA against
# Triton's 8.0: bench/NOTES.md), so the row that decides it.
BENCH="python3 -m fastjl.bench --device cuda --batch 32,64,128,512 --dim ${GPU_CHECK_DIM:-2000000} --proj-dim 2048,8192 \
  --save /tmp/gpu-bench"
SPARSE_CMD="python3 -m fastjl.bench --device cuda --kind sjlt --batch 32,128 --dim 10000000 --proj-dim 4096"
# FASTJL_CUDA_WGMMA=0: the mma.sync kernel (since stop 24 the wgmma kernel is cuda's default on
# compute capability 9.0 for B > 64), as the .base rows below time it
gpu_stage bench_rad_bf16 60 "$L2" "FASTJL_CUDA_WGMMA=0 $BENCH --kind rademacher --dtype bfloat16 --contenders fastjl-cuda,fastjl-triton"
# Triton's former D-split plan (8 warps per SM: 2 programs of its B <= 32 tiles), beside the
# rows above (16 warps per SM since stop 26)
gpu_stage bench_triton_plan 30 "$L2" "FASTJL_TRITON_WARPS_PER_SM=8 $BENCH --kind rademacher --dtype bfloat16 --batch 32 --contenders fastjl-triton --save /tmp/gpu-bench/triton-plan8"
# the Hopper (wgmma) kernel on the same shapes, beside the mma.sync rows above
gpu_stage bench_rad_bf16_wgmma 60 "$L2" "FASTJL_CUDA_WGMMA=1 $BENCH --kind rademacher --dtype bfloat16 --contenders fastjl-cuda --save /tmp/gpu-bench/wgmma"
if [ "$HAVE_BASE" = 1 ]; then
  # run from inside .base, so that its fastjl (not this one) is the one imported; the first
  # line of the log names the module and its build ("gpu-check-base")
  gpu_stage bench_rad_bf16_base 50 "$L2" "cd .base && export PYTHONPATH=$PWD/.base:/tmp/peers &&
    python3 -c 'import fastjl, fastjl._C as C; print(\"baseline:\", fastjl.__file__, C.__file__, C.build_info()[\"version\"])' &&
    FASTJL_CUDA_WGMMA=0 $BENCH --kind rademacher --dtype bfloat16 --contenders fastjl-cuda --save /tmp/gpu-bench/base &&
    FASTJL_CUDA_WGMMA=1 $BENCH --kind rademacher --dtype bfloat16 --batch 128,512 --contenders fastjl-cuda --save /tmp/gpu-bench/base-wgmma"
  # the CUDA sparse kernel's rows in the .base tree (part 3 times the current ones)
  gpu_stage bench_sjlt_base 30 "$L2" "cd .base && export PYTHONPATH=$PWD/.base:/tmp/peers &&
    $SPARSE_CMD --dtype float32 --contenders fastjl-cuda --save /tmp/gpu-bench/base &&
    $SPARSE_CMD --dtype bfloat16 --sparsity 4 --contenders fastjl-cuda --save /tmp/gpu-bench/base"
fi
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
NCU_SECTIONS="--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  --section SchedulerStats --section MemoryWorkloadAnalysis_Tables --section InstructionStats --section SourceCounters --clock-control none \
  --launch-skip 1 --launch-count 1 --print-summary none"
NCU_DENSE="python3 bench/ncu_target.py --kind rademacher --dtype bfloat16 --batch 128 --dim 2000000 --proj-dim 2048"
L5=$OUT/2_ncu.log
gpu_stage ncu_dense 90 "$L5" "FASTJL_CUDA_WGMMA=0 $NCU $NCU_SECTIONS --kernel-name regex:project_kernel $NCU_DENSE &&
  FASTJL_CUDA_WGMMA=1 $NCU $NCU_SECTIONS --kernel-name regex:project_kernel $NCU_DENSE &&
  $NCU $NCU_SECTIONS --kernel-name regex:_project_kernel $NCU_DENSE --backend triton"
gpu_stage ncu_sparse 70 "$L5" "$NCU $NCU_SECTIONS --kernel-name regex:sparse_project_kernel python3 bench/ncu_target.py --kind sjlt --dtype bfloat16 --sparsity 4 &&
  $NCU $NCU_SECTIONS --kernel-name regex:sparse_project_kernel python3 bench/ncu_target.py --kind sjlt --dtype float32 --sparsity 1"

# 3. the rest of the issues' target rows: TRAK's fast_jl (fp16) [21 s], float32 x [18 s], the
#    sparse kinds against index_add_ and the sjlt package [31 s], gaussian [26 s]
[ -n "${PEER_PID:-}" ] && { wait "$PEER_PID"; cat /tmp/fast_jl_build.log >> "$L0"; }
gpu_stage bench_rad_fp16 80 "$L2" "$BENCH --kind rademacher --dtype float16 --contenders fastjl-cuda,fastjl-triton,fast_jl"
gpu_stage bench_rad_fp32 40 "$L2" "$BENCH --kind rademacher --dtype float32 --contenders fastjl-cuda,fastjl-triton"
[ -n "${SJLT_PID:-}" ] && { wait "$SJLT_PID"; cat /tmp/sjlt_build.log >> "$L0"; }
export PYTHONPATH=$PYTHONPATH:/tmp/peers_sjlt
SPARSE="$SPARSE_CMD --save /tmp/gpu-bench"
gpu_stage bench_sjlt_fp32 45 "$L2" "$SPARSE --dtype float32 --contenders fastjl-cuda,fastjl-triton,fastjl-torch,index-add,sjlt"
gpu_stage bench_sjlt_bf16 35 "$L2" "$SPARSE --dtype bfloat16 --sparsity 4 --contenders fastjl-cuda,fastjl-triton,fastjl-torch,index-add,sjlt"
gpu_stage bench_gauss_bf16 80 "$L2" "$BENCH --kind gaussian --dtype bfloat16 --contenders fastjl-cuda,fastjl-triton"

# 4. the rest of correctness, then what is left: error against float64 as D grows [32 s]; the
#    other GPU-marked tests (sparse kinds on CUDA tensors, nccl, dispatch; [~130 s]); the Triton
#    sparse suite on CUDA tensors [24 s]; Triton's tf32x3 for float32 x; the launch-plan probe
#    [19 s]; trak_core on a GPT-2-small shape [30 s]; the compile-bound self-check and Triton
#    suites (they reuse the self-check's compiled kernels from Triton's on-disk cache).
gpu_stage precision 90 "$L1" "python3 bench/gpu_precision.py --json $OUT/1_precision.json"
IGNORE_FIRST=""
grep -q "^pytest_changed rc=" "$SUM" && for f in $GPU_TESTS_FIRST; do IGNORE_FIRST="$IGNORE_FIRST --ignore=$f"; done
gpu_stage pytest_gpu 170 "$L1" "$PYTEST_GPU $IGNORE_FIRST ${GPU_TESTS:-tests}"
gpu_stage triton_sparse_tests 90 "$L1" "python3 -m pytest -q -rfE $TMO -p no:cacheprovider tests/test_triton_sparse.py"
# float32 x: "auto" runs the CUDA kernel (bf16 hi + lo, ~1e-5) because Triton's default tf32 errs
# 4e-4 to 8e-4; Triton's tf32x3 (3 tf32 products) may give both: its speed and error decide the order
gpu_stage bench_rad_fp32_tf32x3 40 "$L2" "FASTJL_TRITON_FP32_PRECISION=tf32x3 $BENCH --kind rademacher --dtype float32 --contenders fastjl-triton --save /tmp/gpu-bench/tf32x3 &&
  FASTJL_TRITON_FP32_PRECISION=tf32x3 python3 bench/gpu_precision.py --backends triton --dims 1e6,1e8"
gpu_stage plan_bench 30 "$L2" "python3 bench/gpu_plan_bench.py --quick"
gpu_stage lm_gpt2_small 60 "$L2" "python3 -m trak_core.bench --preset gpt2-small --device cuda --save /tmp/gpu-bench"
L4=$OUT/1_correctness.log
stage check 130 "$L4" "python3 -m fastjl.check"
gpu_stage triton_tests 110 "$L4" "python3 -m pytest -q -rfE $PAR16 $TMO -p no:cacheprovider tests/test_triton.py tests/test_triton_linear.py"
gpu_stage bench_gauss_fp16 60 "$L2" "$BENCH --kind gaussian --dtype float16 --contenders fastjl-cuda,fastjl-triton,fast_jl"
[ -d /tmp/gpu-bench ] && tar -czf "$OUT/2_bench_json.tgz" -C /tmp gpu-bench
echo "total $SECONDS s" | tee -a "$SUM"
