#!/bin/bash
#SBATCH --job-name=ubench:00000000-0000-0000-0000-000000000000:golden
#SBATCH --comment=ubench:00000000-0000-0000-0000-000000000000:golden
#SBATCH --output=/project/scratch/p200000/ubench/state/recipes/postgres-0/service.log
#SBATCH --open-mode=append
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=240
#SBATCH --account=p200000
#SBATCH --partition=cpu
#SBATCH --qos=default
# Batch script of service.postgres[0], rendered by ubench. `ubench apply` rewrites it:
# edit the stack file instead. The #SBATCH lines are comments to bash, so the
# local target runs this same file as a detached process group.
set -euo pipefail

module load env/release/2024.1
module load Apptainer
export UBENCH_TOKEN=ubench:00000000-0000-0000-0000-000000000000:golden
export UBENCH_ADDRESS='service.postgres[0]'
export UBENCH_RUN_DIR=/project/scratch/p200000/ubench/state/recipes/postgres-0
# Secret values are not written here: they are read at run time from a file
# that only the owner can read.
set -a
. /project/scratch/p200000/ubench/state/recipes/postgres-0/secrets.env
set +a

mkdir -p /project/scratch/p200000/ubench/state/recipes/postgres-0
cd /project/scratch/p200000/ubench/state/recipes/postgres-0

if ! command -v apptainer >/dev/null 2>&1; then
    echo "ubench: apptainer is not installed on $(hostname); load its module (module load Apptainer) or use runtime: host" >&2
    exit 127
fi
# Pull the image once into the cache; never into $HOME by accident.
export APPTAINER_CACHEDIR=/project/scratch/p200000/ubench/apptainer-cache
mkdir -p "$APPTAINER_CACHEDIR"
if [ ! -f /project/scratch/p200000/ubench/apptainer-cache/postgres_16.4.sif ]; then
    # Pull under a unique name and rename, so two jobs pulling at once do not
    # see a half-written image (apptainer pull refuses an existing file).
    apptainer pull /project/scratch/p200000/ubench/apptainer-cache/postgres_16.4.sif.part."$$" docker://postgres:16.4
    mv -f /project/scratch/p200000/ubench/apptainer-cache/postgres_16.4.sif.part."$$" /project/scratch/p200000/ubench/apptainer-cache/postgres_16.4.sif
fi
# apptainer refuses a bind whose source is missing.
mkdir -p /project/scratch/p200000/ubench/state/recipes/postgres-0
exec apptainer exec \
    --cleanenv \
    --bind /project/scratch/p200000/ubench/state/recipes/postgres-0:/project/scratch/p200000/ubench/state/recipes/postgres-0 \
    --env-file /project/scratch/p200000/ubench/state/recipes/postgres-0/secrets.env \
    /project/scratch/p200000/ubench/apptainer-cache/postgres_16.4.sif /bin/bash -c 'set -euo pipefail
base="/project/scratch/p200000/ubench/state/recipes/postgres-0/postgres"
bin_dir=""
run_as=""
pgdata="$base/data"

# Started by root, initdb and postgres run as run_as. setpriv executes the
# command in place (runuser would stay as its parent), so the supervisor'"'"'s
# signals reach postgres itself.
as_owner=()
if [ -n "$run_as" ] && [ "$(id -un)" != "$run_as" ]; then
    as_owner=(setpriv --reuid="$(id -u "$run_as")" --regid="$(id -g "$run_as")"
        --init-groups --)
elif [ "$(id -u)" = 0 ]; then
    echo "postgres recipe: postgres refuses to run as root; set params.run_as" >&2
    exit 1
fi

mkdir -p "$base"
if [ -n "${as_owner[*]}" ]; then
    chown "$run_as" "$base"
fi
# initdb and postgres resolve their own path from the working directory,
# which run_as may not be allowed to read.
cd "$base"

if [ ! -f "$pgdata/PG_VERSION" ]; then
    password_file="$base/.initdb-password"
    (umask 077 && printf '"'"'%s\n'"'"' "$POSTGRES_PASSWORD" > "$password_file")
    if [ -n "${as_owner[*]}" ]; then
        chown "$run_as" "$password_file"
    fi
    "${as_owner[@]}" "${bin_dir:+$bin_dir/}initdb" -D "$pgdata" \
        -U "postgres" --pwfile="$password_file" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8
    rm -f "$password_file"
    # initdb allows TCP only from 127.0.0.1 and ::1, but clients run elsewhere.
    printf '"'"'%s\n'"'"' "host all all 0.0.0.0/0 scram-sha-256" \
        "host all all ::/0 scram-sha-256" >> "$pgdata/pg_hba.conf"
fi

# extra_args is split on spaces on purpose: one string, many options.
exec "${as_owner[@]}" "${bin_dir:+$bin_dir/}postgres" -D "$pgdata" \
    -p "37632" -h "0.0.0.0" -k "/tmp" \
    '
