#!/bin/bash
#SBATCH --job-name=ubench:00000000-0000-0000-0000-000000000000:service.x[0]:0123456789ab
#SBATCH --comment=ubench:00000000-0000-0000-0000-000000000000:service.x[0]:0123456789ab
#SBATCH --output=/scratch/ubench/golden/llm-0/service.log
#SBATCH --open-mode=append
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=120G
#SBATCH --time=2880
#SBATCH --account=p200000
#SBATCH --partition=gpu
#SBATCH --qos=default
#SBATCH --gres=gpu:a100:4
# Batch script of service.llm[0], rendered by ubench. `ubench apply` rewrites it:
# edit the stack file instead. The #SBATCH lines are comments to bash, so the
# local target runs this same file as a detached process group.
set -euo pipefail

module load env/release/2024.1
module load Apptainer
export UBENCH_TOKEN='ubench:00000000-0000-0000-0000-000000000000:service.x[0]:0123456789ab'
export UBENCH_ADDRESS='service.llm[0]'
export UBENCH_RUN_DIR=/scratch/ubench/golden/llm-0
export HF_HOME=/hf
# Secret values are not written here: they are read at run time from a file
# that only the owner can read.
set -a
. /scratch/ubench/golden/llm-0/secrets.env
set +a

mkdir -p /scratch/ubench/golden/llm-0
cd /scratch/ubench/golden/llm-0

if ! command -v apptainer >/dev/null 2>&1; then
    echo "ubench: apptainer is not installed on $(hostname); load its module (module load Apptainer) or use runtime: host" >&2
    exit 127
fi
# Pull the image once into the cache; never into $HOME by accident.
export APPTAINER_CACHEDIR=/project/scratch/p200000/cache
mkdir -p "$APPTAINER_CACHEDIR"
if [ ! -f /project/scratch/p200000/cache/vllm_vllm-openai_v0.6.3.post1.sif ]; then
    # Pull under a unique name and rename, so two jobs pulling at once do not
    # see a half-written image (apptainer pull refuses an existing file).
    apptainer pull /project/scratch/p200000/cache/vllm_vllm-openai_v0.6.3.post1.sif.part."$$" docker://vllm/vllm-openai:v0.6.3.post1
    mv -f /project/scratch/p200000/cache/vllm_vllm-openai_v0.6.3.post1.sif.part."$$" /project/scratch/p200000/cache/vllm_vllm-openai_v0.6.3.post1.sif
fi
# apptainer refuses a bind whose source is missing.
mkdir -p /project/scratch/hf
exec apptainer exec \
    --cleanenv \
    --nv \
    --bind /project/scratch/hf:/hf \
    --bind /etc/ssl/certs:/etc/ssl/certs:ro \
    --env HF_HOME=/hf \
    --env-file /scratch/ubench/golden/llm-0/secrets.env \
    /project/scratch/p200000/cache/vllm_vllm-openai_v0.6.3.post1.sif vllm serve facebook/opt-125m --port 8001
