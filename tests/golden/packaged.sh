#!/bin/bash
#SBATCH --job-name=ubench:00000000-0000-0000-0000-000000000000:service.x[0]:0123456789ab
#SBATCH --comment=ubench:00000000-0000-0000-0000-000000000000:service.x[0]:0123456789ab
#SBATCH --output=/scratch/ubench/golden/packaged-0/service.log
#SBATCH --open-mode=append
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --account=p200000
#SBATCH --partition=cpu
#SBATCH --qos=default
# Batch script of service.packaged[0], rendered by ubench. `ubench apply` rewrites it:
# edit the stack file instead. The #SBATCH lines are comments to bash, so the
# local target runs this same file as a detached process group.
set -euo pipefail

module load env/release/2024.1
module load Apptainer
export UBENCH_TOKEN='ubench:00000000-0000-0000-0000-000000000000:service.x[0]:0123456789ab'
export UBENCH_ADDRESS='service.packaged[0]'
export UBENCH_RUN_DIR=/scratch/ubench/golden/packaged-0

mkdir -p /scratch/ubench/golden/packaged-0
cd /scratch/ubench/golden/packaged-0

if ! command -v apptainer >/dev/null 2>&1; then
    echo "ubench: apptainer is not installed on $(hostname); load its module (module load Apptainer) or use runtime: host" >&2
    exit 127
fi
exec apptainer run \
    --cleanenv \
    /project/images/redis.sif
