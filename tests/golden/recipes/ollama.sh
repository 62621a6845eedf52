#!/bin/bash
#SBATCH --job-name=ubench:00000000-0000-0000-0000-000000000000:golden
#SBATCH --comment=ubench:00000000-0000-0000-0000-000000000000:golden
#SBATCH --output=/project/scratch/p200000/ubench/state/recipes/ollama-0/service.log
#SBATCH --open-mode=append
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --mem=64G
#SBATCH --time=240
#SBATCH --account=p200000
#SBATCH --partition=gpu
#SBATCH --qos=default
#SBATCH --gres=gpu:1
# Batch script of service.ollama[0], rendered by ubench. `ubench apply` rewrites it:
# edit the stack file instead. The #SBATCH lines are comments to bash, so the
# local target runs this same file as a detached process group.
set -euo pipefail

module load env/release/2024.1
module load Apptainer
export UBENCH_TOKEN=ubench:00000000-0000-0000-0000-000000000000:golden
export UBENCH_ADDRESS='service.ollama[0]'
export UBENCH_RUN_DIR=/project/scratch/p200000/ubench/state/recipes/ollama-0
export OLLAMA_KEEP_ALIVE=24h
export OLLAMA_MODELS=/project/scratch/p200000/ubench/state/recipes/ollama-0/models

mkdir -p /project/scratch/p200000/ubench/state/recipes/ollama-0
cd /project/scratch/p200000/ubench/state/recipes/ollama-0

if ! command -v apptainer >/dev/null 2>&1; then
    echo "ubench: apptainer is not installed on $(hostname); load its module (module load Apptainer) or use runtime: host" >&2
    exit 127
fi
# Pull the image once into the cache; never into $HOME by accident.
export APPTAINER_CACHEDIR=/project/scratch/p200000/ubench/apptainer-cache
mkdir -p "$APPTAINER_CACHEDIR"
if [ ! -f /project/scratch/p200000/ubench/apptainer-cache/ollama_ollama_0.6.8.sif ]; then
    # Pull under a unique name and rename, so two jobs pulling at once do not
    # see a half-written image (apptainer pull refuses an existing file).
    apptainer pull /project/scratch/p200000/ubench/apptainer-cache/ollama_ollama_0.6.8.sif.part."$$" docker://ollama/ollama:0.6.8
    mv -f /project/scratch/p200000/ubench/apptainer-cache/ollama_ollama_0.6.8.sif.part."$$" /project/scratch/p200000/ubench/apptainer-cache/ollama_ollama_0.6.8.sif
fi
# apptainer refuses a bind whose source is missing.
mkdir -p /project/scratch/p200000/ubench/state/recipes/ollama-0
exec apptainer exec \
    --cleanenv \
    --nv \
    --bind /project/scratch/p200000/ubench/state/recipes/ollama-0:/project/scratch/p200000/ubench/state/recipes/ollama-0 \
    --env OLLAMA_KEEP_ALIVE=24h \
    --env OLLAMA_MODELS=/project/scratch/p200000/ubench/state/recipes/ollama-0/models \
    /project/scratch/p200000/ubench/apptainer-cache/ollama_ollama_0.6.8.sif /bin/bash -c 'set -euo pipefail
model="qwen2.5:7b"
# Manifests live at MODELS/manifests/REGISTRY/NAMESPACE/NAME/TAG. A bare
# name is in registry.ollama.ai/library, and the tag defaults to latest.
name="${model%:*}"
tag="${model##*:}"
if [ "$name" = "$model" ]; then
    tag=latest
fi
case "$name" in
    */*/*) path="$name" ;;
    */*) path="registry.ollama.ai/$name" ;;
    *) path="registry.ollama.ai/library/$name" ;;
esac
manifest="$OLLAMA_MODELS/manifests/$path/$tag"

if [ -f "$manifest" ]; then
    echo "ollama recipe: $model is in $OLLAMA_MODELS; not pulling"
else
    echo "ollama recipe: pulling $model into $OLLAMA_MODELS"
    mkdir -p "$OLLAMA_MODELS"
    export OLLAMA_HOST="127.0.0.1:28518"
    ollama serve &
    puller=$!
    trap '"'"'kill "$puller" 2>/dev/null || true'"'"' EXIT
    until ollama list >/dev/null 2>&1; do
        if ! kill -0 "$puller" 2>/dev/null; then
            echo "ollama recipe: the pull server exited" >&2
            exit 1
        fi
        sleep 1
    done
    ollama pull "$model"
    kill "$puller"
    wait "$puller" || true
    trap - EXIT
fi

export OLLAMA_HOST="0.0.0.0:25874"
exec ollama serve'
