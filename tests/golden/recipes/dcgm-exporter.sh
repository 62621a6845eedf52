#!/bin/bash
#SBATCH --job-name=ubench:00000000-0000-0000-0000-000000000000:golden
#SBATCH --comment=ubench:00000000-0000-0000-0000-000000000000:golden
#SBATCH --output=/project/scratch/p200000/ubench/state/recipes/dcgm-exporter-0/service.log
#SBATCH --open-mode=append
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --mem=4G
#SBATCH --time=240
#SBATCH --account=p200000
#SBATCH --partition=gpu
#SBATCH --qos=default
#SBATCH --gres=gpu:1
# Batch script of service.dcgm-exporter[0], rendered by ubench. `ubench apply` rewrites it:
# edit the stack file instead. The #SBATCH lines are comments to bash, so the
# local target runs this same file as a detached process group.
set -euo pipefail

module load env/release/2024.1
module load Apptainer
export UBENCH_TOKEN=ubench:00000000-0000-0000-0000-000000000000:golden
export UBENCH_ADDRESS='service.dcgm-exporter[0]'
export UBENCH_RUN_DIR=/project/scratch/p200000/ubench/state/recipes/dcgm-exporter-0

mkdir -p /project/scratch/p200000/ubench/state/recipes/dcgm-exporter-0
cd /project/scratch/p200000/ubench/state/recipes/dcgm-exporter-0

if ! command -v apptainer >/dev/null 2>&1; then
    echo "ubench: apptainer is not installed on $(hostname); load its module (module load Apptainer) or use runtime: host" >&2
    exit 127
fi
# Pull the image once into the cache; never into $HOME by accident.
export APPTAINER_CACHEDIR=/project/scratch/p200000/ubench/apptainer-cache
mkdir -p "$APPTAINER_CACHEDIR"
if [ ! -f /project/scratch/p200000/ubench/apptainer-cache/nvcr.io_nvidia_k8s_dcgm-exporter_3.3.5-3.4.1-ubuntu22.04.sif ]; then
    # Pull under a unique name and rename, so two jobs pulling at once do not
    # see a half-written image (apptainer pull refuses an existing file).
    apptainer pull /project/scratch/p200000/ubench/apptainer-cache/nvcr.io_nvidia_k8s_dcgm-exporter_3.3.5-3.4.1-ubuntu22.04.sif.part."$$" docker://nvcr.io/nvidia/k8s/dcgm-exporter:3.3.5-3.4.1-ubuntu22.04
    mv -f /project/scratch/p200000/ubench/apptainer-cache/nvcr.io_nvidia_k8s_dcgm-exporter_3.3.5-3.4.1-ubuntu22.04.sif.part."$$" /project/scratch/p200000/ubench/apptainer-cache/nvcr.io_nvidia_k8s_dcgm-exporter_3.3.5-3.4.1-ubuntu22.04.sif
fi
exec apptainer exec \
    --cleanenv \
    --nv \
    /project/scratch/p200000/ubench/apptainer-cache/nvcr.io_nvidia_k8s_dcgm-exporter_3.3.5-3.4.1-ubuntu22.04.sif dcgm-exporter --address 0.0.0.0:9400 --collectors /etc/dcgm-exporter/default-counters.csv
