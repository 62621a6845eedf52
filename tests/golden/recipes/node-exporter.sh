#!/bin/bash
#SBATCH --job-name=ubench:00000000-0000-0000-0000-000000000000:golden
#SBATCH --comment=ubench:00000000-0000-0000-0000-000000000000:golden
#SBATCH --output=/project/scratch/p200000/ubench/state/recipes/node-exporter-0/service.log
#SBATCH --open-mode=append
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=1G
#SBATCH --time=480
#SBATCH --account=p200000
#SBATCH --partition=cpu
#SBATCH --qos=default
# Batch script of service.node-exporter[0], rendered by ubench. `ubench apply` rewrites it:
# edit the stack file instead. The #SBATCH lines are comments to bash, so the
# local target runs this same file as a detached process group.
set -euo pipefail

module load env/release/2024.1
module load Apptainer
export UBENCH_TOKEN=ubench:00000000-0000-0000-0000-000000000000:golden
export UBENCH_ADDRESS='service.node-exporter[0]'
export UBENCH_RUN_DIR=/project/scratch/p200000/ubench/state/recipes/node-exporter-0

mkdir -p /project/scratch/p200000/ubench/state/recipes/node-exporter-0
cd /project/scratch/p200000/ubench/state/recipes/node-exporter-0

if ! command -v apptainer >/dev/null 2>&1; then
    echo "ubench: apptainer is not installed on $(hostname); load its module (module load Apptainer) or use runtime: host" >&2
    exit 127
fi
# Pull the image once into the cache; never into $HOME by accident.
export APPTAINER_CACHEDIR=/project/scratch/p200000/ubench/apptainer-cache
mkdir -p "$APPTAINER_CACHEDIR"
if [ ! -f /project/scratch/p200000/ubench/apptainer-cache/prom_node-exporter_v1.8.2.sif ]; then
    # Pull under a unique name and rename, so two jobs pulling at once do not
    # see a half-written image (apptainer pull refuses an existing file).
    apptainer pull /project/scratch/p200000/ubench/apptainer-cache/prom_node-exporter_v1.8.2.sif.part."$$" docker://prom/node-exporter:v1.8.2
    mv -f /project/scratch/p200000/ubench/apptainer-cache/prom_node-exporter_v1.8.2.sif.part."$$" /project/scratch/p200000/ubench/apptainer-cache/prom_node-exporter_v1.8.2.sif
fi
exec apptainer exec \
    --cleanenv \
    --bind /proc:/host/proc:ro \
    --bind /sys:/host/sys:ro \
    /project/scratch/p200000/ubench/apptainer-cache/prom_node-exporter_v1.8.2.sif /bin/sh -c 'set -eu
procfs=/host/proc
sysfs=/host/sys
if [ ! -d "$procfs/self" ]; then
    procfs=/proc
    sysfs=/sys
fi
exec "node_exporter" \
    --web.listen-address="0.0.0.0:9100" \
    --path.procfs="$procfs" \
    --path.sysfs="$sysfs"'
