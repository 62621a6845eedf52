#!/bin/bash
#SBATCH --job-name=ubench:00000000-0000-0000-0000-000000000000:golden
#SBATCH --comment=ubench:00000000-0000-0000-0000-000000000000:golden
#SBATCH --output=/project/scratch/p200000/ubench/state/recipes/chroma-0/service.log
#SBATCH --open-mode=append
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=240
#SBATCH --account=p200000
#SBATCH --partition=cpu
#SBATCH --qos=default
# Batch script of service.chroma[0], rendered by ubench. `ubench apply` rewrites it:
# edit the stack file instead. The #SBATCH lines are comments to bash, so the
# local target runs this same file as a detached process group.
set -euo pipefail

module load env/release/2024.1
module load Apptainer
export UBENCH_TOKEN=ubench:00000000-0000-0000-0000-000000000000:golden
export UBENCH_ADDRESS='service.chroma[0]'
export UBENCH_RUN_DIR=/project/scratch/p200000/ubench/state/recipes/chroma-0
export ANONYMIZED_TELEMETRY=False

mkdir -p /project/scratch/p200000/ubench/state/recipes/chroma-0
cd /project/scratch/p200000/ubench/state/recipes/chroma-0

if ! command -v apptainer >/dev/null 2>&1; then
    echo "ubench: apptainer is not installed on $(hostname); load its module (module load Apptainer) or use runtime: host" >&2
    exit 127
fi
# Pull the image once into the cache; never into $HOME by accident.
export APPTAINER_CACHEDIR=/project/scratch/p200000/ubench/apptainer-cache
mkdir -p "$APPTAINER_CACHEDIR"
if [ ! -f /project/scratch/p200000/ubench/apptainer-cache/chromadb_chroma_1.5.9.sif ]; then
    # Pull under a unique name and rename, so two jobs pulling at once do not
    # see a half-written image (apptainer pull refuses an existing file).
    apptainer pull /project/scratch/p200000/ubench/apptainer-cache/chromadb_chroma_1.5.9.sif.part."$$" docker://chromadb/chroma:1.5.9
    mv -f /project/scratch/p200000/ubench/apptainer-cache/chromadb_chroma_1.5.9.sif.part."$$" /project/scratch/p200000/ubench/apptainer-cache/chromadb_chroma_1.5.9.sif
fi
# apptainer refuses a bind whose source is missing.
mkdir -p /project/scratch/p200000/ubench/state/recipes/chroma-0
exec apptainer exec \
    --cleanenv \
    --bind /project/scratch/p200000/ubench/state/recipes/chroma-0:/project/scratch/p200000/ubench/state/recipes/chroma-0 \
    --env ANONYMIZED_TELEMETRY=False \
    /project/scratch/p200000/ubench/apptainer-cache/chromadb_chroma_1.5.9.sif chroma run --host 0.0.0.0 --port 27622 --path /project/scratch/p200000/ubench/state/recipes/chroma-0/chroma
