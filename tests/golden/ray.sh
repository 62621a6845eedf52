#!/bin/bash
#SBATCH --job-name=ubench:00000000-0000-0000-0000-000000000000:service.x[0]:0123456789ab
#SBATCH --comment=ubench:00000000-0000-0000-0000-000000000000:service.x[0]:0123456789ab
#SBATCH --output=/scratch/ubench/golden/ray-0/service.log
#SBATCH --open-mode=append
#SBATCH --nodes=3
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --account=p200000
#SBATCH --partition=cpu
#SBATCH --qos=default
# Batch script of service.ray[0], rendered by ubench. `ubench apply` rewrites it:
# edit the stack file instead. The #SBATCH lines are comments to bash, so the
# local target runs this same file as a detached process group.
set -euo pipefail

module load env/release/2024.1
module load Apptainer
export UBENCH_TOKEN='ubench:00000000-0000-0000-0000-000000000000:service.x[0]:0123456789ab'
export UBENCH_ADDRESS='service.ray[0]'
export UBENCH_RUN_DIR=/scratch/ubench/golden/ray-0

mkdir -p /scratch/ubench/golden/ray-0
cd /scratch/ubench/golden/ray-0

# The service replaces this shell, so a stop signal reaches it directly.
exec srun --nodes=3 --ntasks-per-node=1 --cpus-per-task=8 --kill-on-bad-exit=1 /bin/bash -c 'if [ "$SLURM_PROCID" = 0 ]; then exec ray start --head --block; fi
exec ray start --address "$HEAD:6379" --block'
