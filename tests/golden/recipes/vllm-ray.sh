#!/bin/bash
#SBATCH --job-name=ubench:00000000-0000-0000-0000-000000000000:golden
#SBATCH --comment=ubench:00000000-0000-0000-0000-000000000000:golden
#SBATCH --output=/project/scratch/p200000/ubench/state/recipes/vllm-ray-0/service.log
#SBATCH --open-mode=append
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=32
#SBATCH --mem=200G
#SBATCH --time=360
#SBATCH --account=p200000
#SBATCH --partition=gpu
#SBATCH --qos=default
#SBATCH --gres=gpu:4
# Batch script of service.vllm-ray[0], rendered by ubench. `ubench apply` rewrites it:
# edit the stack file instead. The #SBATCH lines are comments to bash, so the
# local target runs this same file as a detached process group.
set -euo pipefail

module load env/release/2024.1
module load Apptainer
export UBENCH_TOKEN=ubench:00000000-0000-0000-0000-000000000000:golden
export UBENCH_ADDRESS='service.vllm-ray[0]'
export UBENCH_RUN_DIR=/project/scratch/p200000/ubench/state/recipes/vllm-ray-0
export DO_NOT_TRACK=1
export HF_HOME=/project/scratch/p200000/ubench/state/recipes/vllm-ray-0/huggingface
export VLLM_NO_USAGE_STATS=1
# Secret values are not written here: they are read at run time from a file
# that only the owner can read.
set -a
. /project/scratch/p200000/ubench/state/recipes/vllm-ray-0/secrets.env
set +a

mkdir -p /project/scratch/p200000/ubench/state/recipes/vllm-ray-0
cd /project/scratch/p200000/ubench/state/recipes/vllm-ray-0

if ! command -v apptainer >/dev/null 2>&1; then
    echo "ubench: apptainer is not installed on $(hostname); load its module (module load Apptainer) or use runtime: host" >&2
    exit 127
fi
# Pull the image once into the cache; never into $HOME by accident.
export APPTAINER_CACHEDIR=/project/scratch/p200000/ubench/apptainer-cache
mkdir -p "$APPTAINER_CACHEDIR"
if [ ! -f /project/scratch/p200000/ubench/apptainer-cache/vllm_vllm-openai_v0.8.5.sif ]; then
    # Pull under a unique name and rename, so two jobs pulling at once do not
    # see a half-written image (apptainer pull refuses an existing file).
    apptainer pull /project/scratch/p200000/ubench/apptainer-cache/vllm_vllm-openai_v0.8.5.sif.part."$$" docker://vllm/vllm-openai:v0.8.5
    mv -f /project/scratch/p200000/ubench/apptainer-cache/vllm_vllm-openai_v0.8.5.sif.part."$$" /project/scratch/p200000/ubench/apptainer-cache/vllm_vllm-openai_v0.8.5.sif
fi
# apptainer refuses a bind whose source is missing.
mkdir -p /project/scratch/p200000/ubench/state/recipes/vllm-ray-0
# --cleanenv drops the per-task Slurm variables that tell each task which node
# it is on; APPTAINERENV_ variables reach the container despite it, so every
# srun task sets them from its own values before starting apptainer.
exec srun --nodes=2 --ntasks-per-node=1 --cpus-per-task=32 --kill-on-bad-exit=1 /bin/bash -c 'for name in SLURM_NODEID SLURM_PROCID SLURM_LOCALID SLURM_NNODES SLURM_NTASKS SLURM_JOB_ID SLURM_JOB_NODELIST; do export "APPTAINERENV_$name=${!name-}"; done; exec "$@"' ubench-task \
    apptainer exec \
    --cleanenv \
    --nv \
    --bind /project/scratch/p200000/ubench/state/recipes/vllm-ray-0:/project/scratch/p200000/ubench/state/recipes/vllm-ray-0 \
    --env DO_NOT_TRACK=1 \
    --env HF_HOME=/project/scratch/p200000/ubench/state/recipes/vllm-ray-0/huggingface \
    --env VLLM_NO_USAGE_STATS=1 \
    --env-file /project/scratch/p200000/ubench/state/recipes/vllm-ray-0/secrets.env \
    /project/scratch/p200000/ubench/apptainer-cache/vllm_vllm-openai_v0.8.5.sif /bin/bash -c 'set -euo pipefail
need_slurm="is not set: vllm-ray runs as one srun task per node of a Slurm job"
node_rank="${SLURM_NODEID:?SLURM_NODEID $need_slurm}"
nodes="${SLURM_NNODES:?SLURM_NNODES $need_slurm}"
job_id="${SLURM_JOB_ID:?SLURM_JOB_ID $need_slurm}"
ray_port="32924"
gpus="4"
join_timeout_s="600"
head_file="/project/scratch/p200000/ubench/state/recipes/vllm-ray-0/ray-head.$job_id"
node_ip="$(getent ahostsv4 "$(hostname)" | awk '"'"'NR == 1 {print $1}'"'"')"
export VLLM_HOST_IP="$node_ip"
echo "vllm-ray: node $node_rank of $nodes is $(hostname) ($node_ip)"

if [ "$node_rank" != 0 ]; then
    waited=0
    until [ -s "$head_file" ]; do
        if [ "$waited" -ge "$join_timeout_s" ]; then
            echo "vllm-ray: no Ray head address in $head_file after $waited s" >&2
            exit 1
        fi
        sleep 2
        waited=$((waited + 2))
    done
    exec ray start --block --address="$(cat "$head_file"):$ray_port" \
        --node-ip-address="$node_ip" --num-gpus="$gpus" --disable-usage-stats
fi

stop_ray() {
    rm -f "$head_file"
    ray stop --force >/dev/null 2>&1 || true
}
trap stop_ray EXIT
ray start --head --port="$ray_port" --node-ip-address="$node_ip" \
    --num-gpus="$gpus" --include-dashboard=false --disable-usage-stats
# Publish the address only once the head listens, and rename the file so
# that a worker never reads it half-written.
echo "$node_ip" > "$head_file.part"
mv -f "$head_file.part" "$head_file"

python3 - "$nodes" "$join_timeout_s" <<'"'"'EOF'"'"'
import sys
import time

import ray

expected, timeout_s = int(sys.argv[1]), float(sys.argv[2])
ray.init(address="auto", logging_level="ERROR")
deadline = time.monotonic() + timeout_s
while True:
    alive = sum(1 for node in ray.nodes() if node["Alive"])
    if alive >= expected:
        print(f"vllm-ray: all {alive} nodes joined the Ray cluster", flush=True)
        break
    if time.monotonic() > deadline:
        sys.exit(f"vllm-ray: {alive} of {expected} nodes joined in {timeout_s:g} s")
    time.sleep(2)
EOF

args=(
    --host "0.0.0.0"
    --port "36163"
    --tensor-parallel-size "$gpus"
    --pipeline-parallel-size "$nodes"
    --distributed-executor-backend ray
    --gpu-memory-utilization "0.9"
)
max_model_len=""
if [ -n "$max_model_len" ]; then
    args+=(--max-model-len "$max_model_len")
fi
served_model_name=""
if [ -n "$served_model_name" ]; then
    args+=(--served-model-name "$served_model_name")
fi
# extra_args is split on spaces on purpose: one string, many options.
args+=()

# vLLM runs as a child, not through exec, so that the EXIT trap stops Ray.
vllm serve "Qwen/Qwen2.5-72B-Instruct" "${args[@]}" &
server=$!
trap '"'"'kill -TERM "$server" 2>/dev/null || true'"'"' TERM INT
status=0
wait "$server" || status=$?
# A trapped signal ends the first wait early: wait for vLLM to exit.
if kill -0 "$server" 2>/dev/null; then
    wait "$server" || status=$?
fi
exit "$status"'
