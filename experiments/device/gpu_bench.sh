#!/usr/bin/env bash
# Issue 9 on a lent GPU (the `device` tool of this workplace): the benchmark suite in one call.
#
# Benchmarks run as separate processes, at most $JOBS at once, in priority order (the MNIST
# meta-step first): their compiles (host work) overlap on the machine's cores, while their timed
# sections take turns on the GPU through the file lock $MPLP_BENCH_LOCK
# (benchmarks/harness.exclusive_device), so each timing has the GPU to itself. First calls
# and compile times are measured with other compiles beside them: the rows say so (note). Each
# process gets the time that is left; a loop packs whatever JSON and logs exist into
# $OUT/gpu_bench.tgz every 15 s, so a cut-off call still returns what finished.
#
# Session 8 (benchmarks/results/gpu/gpu_bench_run.json) started all 14 at once: the host's
# 16 cores ran at a load of ~87, the first GPU compile of an MNIST-shaped meta-step (XLA's
# autotuning included) took 206-249 s, and 9 of 14 processes hit the limit. Hence the queue.
#
#   BUDGET=480 bash experiments/device/gpu_bench.sh    # needs .whl (pydantic wheels) and .devdata/mnist.npz
#   (carry .whl, .devdata and, from an earlier call's $OUT/jax_cache.tgz copied there, .gpucache)
#   QUICK=1 BUDGET=900 OUT=/tmp/out bash experiments/device/gpu_bench.sh   # smoke settings (a CPU dry run)
set -u
: "${OUT:?OUT must be set}"
BUDGET=${BUDGET:-480}
T0=$(date +%s)
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false MPLP_GRAPH_CACHE=off \
       MPLP_MNIST=$PWD/.devdata/mnist.npz MPLP_BENCH_LOCK=/tmp/mplp_bench.lock
if [ -d .whl ] && [ -z "${SKIP_WHEELS:-}" ]; then  # the GPU image has no pydantic
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
PY=${PY:-python3}
R=${RESULTS:-/tmp/gpu_bench}; rm -rf "$R"; mkdir -p "$R"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; nproc;
  $PY -c "import jax, optax, pydantic; print('jax', jax.__version__, jax.devices(), 'optax', optax.__version__, 'pydantic', pydantic.VERSION)"; } > "$R/env.txt" 2>&1
cat "$R/env.txt"
NOTE="one GPU; up to ${JOBS:-4} benchmark processes side by side on the host (compiles overlap), timed sections one at a time (experiments/device/gpu_bench.sh)"
# AUTOTUNE=0: XLA's GPU autotuning off (cuBLAS's default algorithms; a shorter first compile,
# maybe slower kernels); the benchmarks record XLA_FLAGS in their JSON
if [ -n "${AUTOTUNE:-}" ]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=$AUTOTUNE"
  NOTE="$NOTE; XLA_FLAGS=$XLA_FLAGS"
fi
# JAX's persistent compilation cache (CACHE=0: off, every compile cold): a program compiled by one
# process is loaded by the next, and the cache goes back in $OUT/jax_cache.tgz; carried in again
# as .gpucache (see below), a later call loads what an earlier one compiled (the same GPU kind,
# driver and jax), so a call cut off by the time limit is not paid twice
if [ "${CACHE:-1}" != 0 ]; then
  CDIR=/tmp/jax_cache; mkdir -p $CDIR
  [ -f .gpucache/jax_cache.tgz ] && tar xzf .gpucache/jax_cache.tgz -C $CDIR && echo "cache: $(ls $CDIR | wc -l) entries carried in"
  export JAX_COMPILATION_CACHE_DIR=$CDIR JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=1
  NOTE="$NOTE; persistent compilation cache on: first calls and compile times may be cache loads"
fi
LIMIT=$((BUDGET - 25))

job() {  # job NAME RUN_ALL_ARGS...: one benchmark process (python -m benchmarks.run_all) with the time that is left
  local name=$1; shift
  local left=$((LIMIT - ($(date +%s) - T0)))
  if [ "$left" -lt 30 ]; then echo "$name skipped: ${left}s left" >> "$R/rc.txt"; return; fi  # (timeout 0 = no limit)
  timeout "$left" $PY -m benchmarks.run_all --out-dir "$R" --note "$NOTE" $ROUNDS "$@" > "$R/$name.log" 2>&1
  echo "$name rc=$? $(( $(date +%s) - T0 ))s" >> "$R/rc.txt"
}
if [ -n "${QUICK:-}" ]; then
  ROUNDS="--rounds 1"; MNIST="small_meta_step"; BIG=""; EVAL="eval_sinusoid_small"
else
  ROUNDS=""; MNIST="mnist_meta_step"; BIG="mnist784_meta_step"; EVAL="eval_mnist eval_sinusoid"
fi
pack() { tar czf "$OUT/.gpu_bench.tgz" -C "$R" . 2>/dev/null && mv "$OUT/.gpu_bench.tgz" "$OUT/gpu_bench.tgz"; }
JOBS=${JOBS:-4}
queue() {  # queue NAME RUN_ALL_ARGS...: start the job once fewer than $JOBS run (packing while it waits)
  while [ "$(jobs -r | wc -l)" -ge "$JOBS" ]; do sleep 5; pack; done
  job "$@" &
}
# the MNIST meta-step first (the 12 ms target), then the rest in priority order (benchmarks/README.md)
queue mnist --case $MNIST
queue sinusoid --case sinusoid_meta_step
queue eval --case $EVAL
queue device --case mnist_device
[ -n "$BIG" ] && queue big --case $BIG
queue precision --tag precision
queue maml --case maml_meta_step
queue memory --case mnist_remat

while [ -n "$(jobs -r)" ]; do sleep 5; pack; done
nvidia-smi --query-gpu=memory.used --format=csv >> "$R/env.txt" 2>/dev/null
pack
if [ -n "${CDIR:-}" ]; then  # the cache back, if it fits what a call returns (16 MiB a file)
  tar czf /tmp/jax_cache.tgz -C $CDIR . && [ "$(stat -c %s /tmp/jax_cache.tgz)" -lt 16000000 ] && cp /tmp/jax_cache.tgz "$OUT/" \
    && echo "cache: $(ls $CDIR | wc -l) entries in \$OUT/jax_cache.tgz (next call: copy it to .gpucache/ and carry .gpucache)"
fi
cat "$R/rc.txt"
for f in "$R"/*.log; do echo "== $f"; tail -4 "$f"; done
$PY -m benchmarks.run_all --table --out-dir "$R"
