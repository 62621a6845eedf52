#!/bin/bash
#SBATCH --job-name=ubench:00000000-0000-0000-0000-000000000000:golden
#SBATCH --comment=ubench:00000000-0000-0000-0000-000000000000:golden
#SBATCH --output=/project/scratch/p200000/ubench/state/recipes/prometheus-0/service.log
#SBATCH --open-mode=append
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=480
#SBATCH --account=p200000
#SBATCH --partition=cpu
#SBATCH --qos=default
# Batch script of service.prometheus[0], rendered by ubench. `ubench apply` rewrites it:
# edit the stack file instead. The #SBATCH lines are comments to bash, so the
# local target runs this same file as a detached process group.
set -euo pipefail

module load env/release/2024.1
module load Apptainer
export UBENCH_TOKEN=ubench:00000000-0000-0000-0000-000000000000:golden
export UBENCH_ADDRESS='service.prometheus[0]'
export UBENCH_RUN_DIR=/project/scratch/p200000/ubench/state/recipes/prometheus-0

mkdir -p /project/scratch/p200000/ubench/state/recipes/prometheus-0
cd /project/scratch/p200000/ubench/state/recipes/prometheus-0

if ! command -v apptainer >/dev/null 2>&1; then
    echo "ubench: apptainer is not installed on $(hostname); load its module (module load Apptainer) or use runtime: host" >&2
    exit 127
fi
# Pull the image once into the cache; never into $HOME by accident.
export APPTAINER_CACHEDIR=/project/scratch/p200000/ubench/apptainer-cache
mkdir -p "$APPTAINER_CACHEDIR"
if [ ! -f /project/scratch/p200000/ubench/apptainer-cache/prom_prometheus_v2.53.0.sif ]; then
    # Pull under a unique name and rename, so two jobs pulling at once do not
    # see a half-written image (apptainer pull refuses an existing file).
    apptainer pull /project/scratch/p200000/ubench/apptainer-cache/prom_prometheus_v2.53.0.sif.part."$$" docker://prom/prometheus:v2.53.0
    mv -f /project/scratch/p200000/ubench/apptainer-cache/prom_prometheus_v2.53.0.sif.part."$$" /project/scratch/p200000/ubench/apptainer-cache/prom_prometheus_v2.53.0.sif
fi
# apptainer refuses a bind whose source is missing.
mkdir -p /project/scratch/p200000/ubench/state/recipes
exec apptainer exec \
    --cleanenv \
    --bind /project/scratch/p200000/ubench/state/recipes:/project/scratch/p200000/ubench/state/recipes \
    /project/scratch/p200000/ubench/apptainer-cache/prom_prometheus_v2.53.0.sif /bin/sh -c 'set -eu
mkdir -p "/project/scratch/p200000/ubench/state/recipes/file_sd" "/project/scratch/p200000/ubench/state/recipes/prometheus-0/data"
cat > "/project/scratch/p200000/ubench/state/recipes/prometheus-0/prometheus.yml" <<'"'"'EOF'"'"'
global:
  scrape_interval: 15s
  evaluation_interval: 15s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets:
          - "127.0.0.1:36508"
  # One file per service replica. Each entry sets its own job label and
  # __metrics_path__, which take precedence over this job'"'"'s defaults.
  - job_name: ubench
    file_sd_configs:
      - files:
          - "/project/scratch/p200000/ubench/state/recipes/file_sd/*.json"
        refresh_interval: 10s
EOF
exec prometheus \
    --config.file="/project/scratch/p200000/ubench/state/recipes/prometheus-0/prometheus.yml" \
    --storage.tsdb.path="/project/scratch/p200000/ubench/state/recipes/prometheus-0/data" \
    --storage.tsdb.retention.time="15d" \
    --web.listen-address="0.0.0.0:36508" \
    --web.enable-lifecycle'
