#!/usr/bin/env bash
# One prepared call on a lent GPU machine (the `device` tool of this workplace): meta-training
# sweeps for the sinusoid (issue 3) and MNIST (issue 5) experiments, run side by side on one GPU,
# plus the meta-step and evaluation benchmarks (issue 9). Every process has a time budget; a
# background loop copies each run's small files (learner params, metrics, logs) into $OUT as one
# .tgz per run, so whatever finished comes back even if the call is cut off.
#
#   BUDGET=400 bash experiments/device/gpu_run.sh     # needs .whl (pydantic wheels) and .devdata/mnist.npz
set -u
: "${OUT:?OUT must be set}"
BUDGET=${BUDGET:-400}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false MPLP_GRAPH_CACHE=/tmp/xla MPLP_MNIST=$PWD/.devdata
if [ -z "${SKIP_WHEELS:-}" ]; then  # the GPU image has no pydantic
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD
R=/tmp/runs; mkdir -p $R
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import jax, optax, pydantic; print('jax', jax.__version__, jax.devices(), 'optax', optax.__version__, 'pydantic', pydantic.VERSION)"; } > $R/env.txt 2>&1
cat $R/env.txt

SW="python3 experiments/sweep.py --no-progress"
# sinusoid (paper: Adam 1e-4, ~36k steps): 12 runs, 4 each at 1e-4, 2e-4, 3e-4
$SW --config experiments/sinusoid/config.yaml --run-dir $R/sin --seeds 0 1 2 3 4 5 6 7 8 9 10 11 --lr-mults 1 1 1 1 2 2 2 2 3 3 3 3 \
    --steps 60000 --set meta.lr=1e-4 meta.lr_schedule=constant meta.checkpoint_every=1000 \
    --time-budget $BUDGET --log-every 100 > $R/sin.log 2>&1 &
# MNIST, the paper's setup (outer batch 1, Adam 5e-4, 5,000 steps): 4 seeds
$SW --config experiments/mnist/config.yaml --run-dir $R/mn --seeds 0 1 2 3 --steps 5000 \
    --set meta.checkpoint_every=250 --time-budget $BUDGET --log-every 25 > $R/mn.log 2>&1 &
# MNIST beyond the paper: outer batch 4, message 8, 10,000 steps: 2 seeds
$SW --config experiments/mnist/config.yaml --run-dir $R/mnb --seeds 0 1 --steps 10000 \
    --set meta.outer_batch=4 graph.msg=8 meta.checkpoint_every=250 --time-budget $BUDGET --log-every 25 > $R/mnb.log 2>&1 &
# benchmarks (they share the GPU with the three sweeps: recorded as such)
python3 -m benchmarks.run_all --case eval_mnist eval_sinusoid sinusoid_meta_step --rounds 3 --out-dir $R/bench \
    --note "GPU shared with 3 training sweeps" > $R/bench.log 2>&1 &

pack() {
  for r in sin mn mnb; do
    [ -d $R/$r ] || continue
    (cd $R && tar czf $OUT/.$r.tgz $r/params.npz $r/metrics.jsonl $r/sweep.json $r/config.yaml $r.log 2>/dev/null; mv $OUT/.$r.tgz $OUT/$r.tgz)
  done
  (cd $R && tar czf $OUT/.misc.tgz env.txt bench.log bench 2>/dev/null; mv $OUT/.misc.tgz $OUT/misc.tgz)
}
while [ -n "$(jobs -r)" ]; do sleep 20; pack; done
pack
tail -3 $R/*.log
