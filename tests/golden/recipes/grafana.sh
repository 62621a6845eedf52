#!/bin/bash
#SBATCH --job-name=ubench:00000000-0000-0000-0000-000000000000:golden
#SBATCH --comment=ubench:00000000-0000-0000-0000-000000000000:golden
#SBATCH --output=/project/scratch/p200000/ubench/state/recipes/grafana-0/service.log
#SBATCH --open-mode=append
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --mem=4G
#SBATCH --time=480
#SBATCH --account=p200000
#SBATCH --partition=cpu
#SBATCH --qos=default
# Batch script of service.grafana[0], rendered by ubench. `ubench apply` rewrites it:
# edit the stack file instead. The #SBATCH lines are comments to bash, so the
# local target runs this same file as a detached process group.
set -euo pipefail

module load env/release/2024.1
module load Apptainer
export UBENCH_TOKEN=ubench:00000000-0000-0000-0000-000000000000:golden
export UBENCH_ADDRESS='service.grafana[0]'
export UBENCH_RUN_DIR=/project/scratch/p200000/ubench/state/recipes/grafana-0
export GF_ANALYTICS_CHECK_FOR_UPDATES=false
export GF_ANALYTICS_REPORTING_ENABLED=false
export GF_AUTH_ANONYMOUS_ENABLED=false
export GF_PATHS_DATA=/project/scratch/p200000/ubench/state/recipes/grafana-0/data
export GF_PATHS_LOGS=/project/scratch/p200000/ubench/state/recipes/grafana-0/logs
export GF_PATHS_PLUGINS=/project/scratch/p200000/ubench/state/recipes/grafana-0/plugins
export GF_PATHS_PROVISIONING=/project/scratch/p200000/ubench/state/recipes/grafana-0/provisioning
export GF_SECURITY_ADMIN_USER=admin
export GF_SERVER_HTTP_ADDR=0.0.0.0
export GF_SERVER_HTTP_PORT=20700
export GF_USERS_ALLOW_SIGN_UP=false
export PROMETHEUS_URL=http://mel2001:29090
# Secret values are not written here: they are read at run time from a file
# that only the owner can read.
set -a
. /project/scratch/p200000/ubench/state/recipes/grafana-0/secrets.env
set +a

mkdir -p /project/scratch/p200000/ubench/state/recipes/grafana-0
cd /project/scratch/p200000/ubench/state/recipes/grafana-0

if ! command -v apptainer >/dev/null 2>&1; then
    echo "ubench: apptainer is not installed on $(hostname); load its module (module load Apptainer) or use runtime: host" >&2
    exit 127
fi
# Pull the image once into the cache; never into $HOME by accident.
export APPTAINER_CACHEDIR=/project/scratch/p200000/ubench/apptainer-cache
mkdir -p "$APPTAINER_CACHEDIR"
if [ ! -f /project/scratch/p200000/ubench/apptainer-cache/grafana_grafana_11.1.0.sif ]; then
    # Pull under a unique name and rename, so two jobs pulling at once do not
    # see a half-written image (apptainer pull refuses an existing file).
    apptainer pull /project/scratch/p200000/ubench/apptainer-cache/grafana_grafana_11.1.0.sif.part."$$" docker://grafana/grafana:11.1.0
    mv -f /project/scratch/p200000/ubench/apptainer-cache/grafana_grafana_11.1.0.sif.part."$$" /project/scratch/p200000/ubench/apptainer-cache/grafana_grafana_11.1.0.sif
fi
# apptainer refuses a bind whose source is missing.
mkdir -p /project/scratch/p200000/ubench/state/recipes/grafana-0
exec apptainer exec \
    --cleanenv \
    --bind /project/scratch/p200000/ubench/state/recipes/grafana-0:/project/scratch/p200000/ubench/state/recipes/grafana-0 \
    --env GF_ANALYTICS_CHECK_FOR_UPDATES=false \
    --env GF_ANALYTICS_REPORTING_ENABLED=false \
    --env GF_AUTH_ANONYMOUS_ENABLED=false \
    --env GF_PATHS_DATA=/project/scratch/p200000/ubench/state/recipes/grafana-0/data \
    --env GF_PATHS_LOGS=/project/scratch/p200000/ubench/state/recipes/grafana-0/logs \
    --env GF_PATHS_PLUGINS=/project/scratch/p200000/ubench/state/recipes/grafana-0/plugins \
    --env GF_PATHS_PROVISIONING=/project/scratch/p200000/ubench/state/recipes/grafana-0/provisioning \
    --env GF_SECURITY_ADMIN_USER=admin \
    --env GF_SERVER_HTTP_ADDR=0.0.0.0 \
    --env GF_SERVER_HTTP_PORT=20700 \
    --env GF_USERS_ALLOW_SIGN_UP=false \
    --env PROMETHEUS_URL=http://mel2001:29090 \
    --env-file /project/scratch/p200000/ubench/state/recipes/grafana-0/secrets.env \
    /project/scratch/p200000/ubench/apptainer-cache/grafana_grafana_11.1.0.sif /bin/sh -c 'set -eu
provisioning="$GF_PATHS_PROVISIONING"
mkdir -p "$GF_PATHS_DATA" "$GF_PATHS_LOGS" "$GF_PATHS_PLUGINS" \
    "$provisioning/datasources" "$provisioning/dashboards" \
    "$provisioning/plugins" "$provisioning/alerting"
cat > "$provisioning/datasources/prometheus.yaml" <<EOF
apiVersion: 1
datasources:
  - name: Prometheus
    type: prometheus
    access: proxy
    url: $PROMETHEUS_URL
    isDefault: true
    editable: false
EOF
exec grafana server --homepath "/usr/share/grafana"'
