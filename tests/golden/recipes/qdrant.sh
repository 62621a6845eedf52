#!/bin/bash
#SBATCH --job-name=ubench:00000000-0000-0000-0000-000000000000:golden
#SBATCH --comment=ubench:00000000-0000-0000-0000-000000000000:golden
#SBATCH --output=/project/scratch/p200000/ubench/state/recipes/qdrant-0/service.log
#SBATCH --open-mode=append
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --mem=64G
#SBATCH --time=240
#SBATCH --account=p200000
#SBATCH --partition=cpu
#SBATCH --qos=default
# Batch script of service.qdrant[0], rendered by ubench. `ubench apply` rewrites it:
# edit the stack file instead. The #SBATCH lines are comments to bash, so the
# local target runs this same file as a detached process group.
set -euo pipefail

module load env/release/2024.1
module load Apptainer
export UBENCH_TOKEN=ubench:00000000-0000-0000-0000-000000000000:golden
export UBENCH_ADDRESS='service.qdrant[0]'
export UBENCH_RUN_DIR=/project/scratch/p200000/ubench/state/recipes/qdrant-0
export QDRANT__SERVICE__GRPC_PORT=30535
export QDRANT__SERVICE__HOST=0.0.0.0
export QDRANT__SERVICE__HTTP_PORT=30257
export QDRANT__STORAGE__SNAPSHOTS_PATH=/project/scratch/p200000/ubench/state/recipes/qdrant-0/qdrant/snapshots
export QDRANT__STORAGE__STORAGE_PATH=/project/scratch/p200000/ubench/state/recipes/qdrant-0/qdrant/storage
export QDRANT__TELEMETRY_DISABLED=true

mkdir -p /project/scratch/p200000/ubench/state/recipes/qdrant-0
cd /project/scratch/p200000/ubench/state/recipes/qdrant-0

if ! command -v apptainer >/dev/null 2>&1; then
    echo "ubench: apptainer is not installed on $(hostname); load its module (module load Apptainer) or use runtime: host" >&2
    exit 127
fi
# Pull the image once into the cache; never into $HOME by accident.
export APPTAINER_CACHEDIR=/project/scratch/p200000/ubench/apptainer-cache
mkdir -p "$APPTAINER_CACHEDIR"
if [ ! -f /project/scratch/p200000/ubench/apptainer-cache/qdrant_qdrant_v1.13.6.sif ]; then
    # Pull under a unique name and rename, so two jobs pulling at once do not
    # see a half-written image (apptainer pull refuses an existing file).
    apptainer pull /project/scratch/p200000/ubench/apptainer-cache/qdrant_qdrant_v1.13.6.sif.part."$$" docker://qdrant/qdrant:v1.13.6
    mv -f /project/scratch/p200000/ubench/apptainer-cache/qdrant_qdrant_v1.13.6.sif.part."$$" /project/scratch/p200000/ubench/apptainer-cache/qdrant_qdrant_v1.13.6.sif
fi
# apptainer refuses a bind whose source is missing.
mkdir -p /project/scratch/p200000/ubench/state/recipes/qdrant-0
exec apptainer exec \
    --cleanenv \
    --bind /project/scratch/p200000/ubench/state/recipes/qdrant-0:/project/scratch/p200000/ubench/state/recipes/qdrant-0 \
    --env QDRANT__SERVICE__GRPC_PORT=30535 \
    --env QDRANT__SERVICE__HOST=0.0.0.0 \
    --env QDRANT__SERVICE__HTTP_PORT=30257 \
    --env QDRANT__STORAGE__SNAPSHOTS_PATH=/project/scratch/p200000/ubench/state/recipes/qdrant-0/qdrant/snapshots \
    --env QDRANT__STORAGE__STORAGE_PATH=/project/scratch/p200000/ubench/state/recipes/qdrant-0/qdrant/storage \
    --env QDRANT__TELEMETRY_DISABLED=true \
    /project/scratch/p200000/ubench/apptainer-cache/qdrant_qdrant_v1.13.6.sif /qdrant/qdrant
