#!/usr/bin/env bash
# Nsight Compute with details (stall reasons, the source lines behind excessive shared-memory
# wavefronts and uncoalesced sectors) for the kernels gpu_check.sh's ncu stages summarize:
# the CUDA dense kernels (mma.sync with FASTJL_CUDA_WGMMA=0, wgmma with =1; rademacher bf16, B = 128)
# and the CUDA sparse kernel (bf16, s = 4); NCU_TRITON=1 adds two Triton kernels.  Needs fastjl._C built for the GPU (e.g.
# GPU_CHECK_ONLY=build bash bench/gpu_check.sh); logs under $OUT (default /tmp/ncu-details).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/ncu-details}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
SECTIONS="--section WarpStateStats --section SourceCounters --section MemoryWorkloadAnalysis_Tables \
  --print-details all --clock-control none --launch-skip 1 --launch-count 1 --print-summary none"
DENSE="python3 bench/ncu_target.py --kind rademacher --dtype bfloat16 --batch 128 --dim 2000000 --proj-dim 2048"
# FASTJL_CUDA_WGMMA=0: on compute capability 9.0 the wgmma kernel is the default at B = 128.
FASTJL_CUDA_WGMMA=0 timeout 60 $NCU $SECTIONS --kernel-name regex:project_kernel $DENSE > "$OUT/ncu_mma_sync.log" 2>&1
echo "mma.sync rc=$?"
FASTJL_CUDA_WGMMA=1 timeout 60 $NCU $SECTIONS --kernel-name regex:project_kernel $DENSE > "$OUT/ncu_wgmma.log" 2>&1
echo "wgmma rc=$?"
timeout 60 $NCU $SECTIONS --kernel-name regex:sparse_project_kernel python3 bench/ncu_target.py --kind sjlt \
  --dtype bfloat16 --sparsity 4 > "$OUT/ncu_sparse.log" 2>&1
echo "sparse rc=$?"
# NCU_TRITON=1: also Triton's kernels where stop 26 left questions (bench/NOTES.md): rademacher
# bf16 B = 32 (does the 16-warp plan hide its latency?) and gaussian bf16 B = 128 (latency- or
# issue-bound generation: decides whether 16 warps would pay).
if [ "${NCU_TRITON:-0}" = 1 ]; then
  timeout 60 $NCU $SECTIONS --kernel-name regex:_project_kernel python3 bench/ncu_target.py --backend triton \
    --kind rademacher --dtype bfloat16 --batch 32 --dim 2000000 --proj-dim 2048 > "$OUT/ncu_triton_b32.log" 2>&1
  echo "triton B32 rc=$?"
  timeout 60 $NCU $SECTIONS --kernel-name regex:_project_kernel python3 bench/ncu_target.py --backend triton \
    --kind gaussian --dtype bfloat16 --batch 128 --dim 1000000 --proj-dim 2048 > "$OUT/ncu_triton_gauss.log" 2>&1
  echo "triton gaussian rc=$?"
fi
# NCU_SOURCE=1: also the per-SASS-instruction view of the mma.sync kernel (warp stall samples and
# shared-memory wavefronts per instruction, CSV), to find which instructions the stalls sit on.
if [ "${NCU_SOURCE:-0}" = 1 ]; then
  FASTJL_CUDA_WGMMA=0 timeout 90 $NCU --section SourceCounters --section WarpStateStats --page source --print-source sass --csv \
    --clock-control none --launch-skip 1 --launch-count 1 --kernel-name regex:project_kernel $DENSE \
    > "$OUT/ncu_mma_sync_source.csv" 2>&1
  echo "mma.sync source rc=$?"
fi
