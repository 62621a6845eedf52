#!/bin/bash
#SBATCH --job-name=ubench:00000000-0000-0000-0000-000000000000:golden
#SBATCH --comment=ubench:00000000-0000-0000-0000-000000000000:golden
#SBATCH --output=/project/scratch/p200000/ubench/state/recipes/vllm-replicas-0/service.log
#SBATCH --open-mode=append
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=32
#SBATCH --mem=200G
#SBATCH --time=240
#SBATCH --account=p200000
#SBATCH --partition=gpu
#SBATCH --qos=default
#SBATCH --gres=gpu:4
# Batch script of service.vllm-replicas[0], rendered by ubench. `ubench apply` rewrites it:
# edit the stack file instead. The #SBATCH lines are comments to bash, so the
# local target runs this same file as a detached process group.
set -euo pipefail

module load env/release/2024.1
module load Apptainer
export UBENCH_TOKEN=ubench:00000000-0000-0000-0000-000000000000:golden
export UBENCH_ADDRESS='service.vllm-replicas[0]'
export UBENCH_RUN_DIR=/project/scratch/p200000/ubench/state/recipes/vllm-replicas-0
export DO_NOT_TRACK=1
export HF_HOME=/project/scratch/p200000/ubench/state/recipes/vllm-replicas-0/huggingface
export VLLM_NO_USAGE_STATS=1
# Secret values are not written here: they are read at run time from a file
# that only the owner can read.
set -a
. /project/scratch/p200000/ubench/state/recipes/vllm-replicas-0/secrets.env
set +a

mkdir -p /project/scratch/p200000/ubench/state/recipes/vllm-replicas-0
cd /project/scratch/p200000/ubench/state/recipes/vllm-replicas-0

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
mkdir -p /project/scratch/p200000/ubench/state/recipes/vllm-replicas-0
exec apptainer exec \
    --cleanenv \
    --nv \
    --bind /project/scratch/p200000/ubench/state/recipes/vllm-replicas-0:/project/scratch/p200000/ubench/state/recipes/vllm-replicas-0 \
    --env DO_NOT_TRACK=1 \
    --env HF_HOME=/project/scratch/p200000/ubench/state/recipes/vllm-replicas-0/huggingface \
    --env VLLM_NO_USAGE_STATS=1 \
    --env-file /project/scratch/p200000/ubench/state/recipes/vllm-replicas-0/secrets.env \
    /project/scratch/p200000/ubench/apptainer-cache/vllm_vllm-openai_v0.8.5.sif /bin/bash -c 'set -euo pipefail
replicas="4"
gpus_per_replica="1"
base_port="21946"
args=(
    --host "0.0.0.0"
    --tensor-parallel-size "$gpus_per_replica"
    --gpu-memory-utilization "0.9"
)
max_model_len=""
if [ -n "$max_model_len" ]; then
    args+=(--max-model-len "$max_model_len")
fi
# extra_args is split on spaces on purpose: one string, many options.
args+=()

pids=()
stop_all() {
    kill -TERM "${pids[@]}" 2>/dev/null || true
}
trap stop_all TERM INT
for ((i = 0; i < replicas; i++)); do
    first=$((i * gpus_per_replica))
    devices="$(seq -s , "$first" $((first + gpus_per_replica - 1)))"
    port=$((base_port + i))
    CUDA_VISIBLE_DEVICES="$devices" vllm serve "Qwen/Qwen2.5-7B-Instruct" \
        --port "$port" "${args[@]}" &
    pids+=($!)
    echo "vllm-replicas: replica $i on $(hostname):$port, GPUs $devices, pid $!"
done

# The first replica to exit, or a trapped signal, ends the wait.
status=0
wait -n "${pids[@]}" || status=$?
stop_all
wait || true
exit "$status"'
