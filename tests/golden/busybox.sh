#!/bin/bash
#SBATCH --job-name=ubench:00000000-0000-0000-0000-000000000000:service.x[0]:0123456789ab
#SBATCH --comment=ubench:00000000-0000-0000-0000-000000000000:service.x[0]:0123456789ab
#SBATCH --output=/scratch/ubench/golden/busybox-0/service.log
#SBATCH --open-mode=append
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --account=p200000
#SBATCH --partition=cpu
#SBATCH --qos=default
# Batch script of service.busybox[0], rendered by ubench. `ubench apply` rewrites it:
# edit the stack file instead. The #SBATCH lines are comments to bash, so the
# local target runs this same file as a detached process group.
set -euo pipefail

module load env/release/2024.1
module load Apptainer
export UBENCH_TOKEN='ubench:00000000-0000-0000-0000-000000000000:service.x[0]:0123456789ab'
export UBENCH_ADDRESS='service.busybox[0]'
export UBENCH_RUN_DIR=/scratch/ubench/golden/busybox-0

mkdir -p /scratch/ubench/golden/busybox-0
cd /scratch/ubench/golden/busybox-0

if ! command -v ch-run >/dev/null 2>&1; then
    echo "ubench: ch-run is not installed on $(hostname); install Charliecloud or use runtime: host" >&2
    exit 127
fi
# ch-run refuses to start without USER, and a batch job's environment is a copy
# of the submitting one, which may lack it (cron, CI).
export USER="${USER:-$(id -un)}"
# ch-run passes the job's environment through, including the values above, and
# uses the host network, so the service binds the node's ports directly.
mkdir -p /scratch/www
exec ch-run \
    --bind=/scratch/www:/www \
    /scratch/images/busybox -- /bin/busybox httpd -f -p 8080
