#!/usr/bin/env bash
# Local mode: get the organizer's newer notebooks into notebooks/, keeping your edits.
#
#   local/workshop-update.bash                    # from workshop.yml's updates.git_url
#   local/workshop-update.bash --from FOLDER      # from a new thumb drive's notebooks repository
#
# Notebooks you edited stay as they are; where the organizer changed one of them too, their
# version lands beside yours as <name>-updated.ipynb. New notebooks arrive. Running it again
# changes nothing. The work is in appliance/update.py (nbgitpuller's merge).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"

usage="usage: local/workshop-update.bash [--from GIT_URL_OR_FOLDER] [--branch NAME] [--verbose]"
source_arg=""
branch_arg=""
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --from) [ $# -ge 2 ] || die "$usage"; source_arg="$2"; shift 2 ;;
        --branch) [ $# -ge 2 ] || die "$usage"; branch_arg="$2"; shift 2 ;;
        --verbose) extra+=(--verbose); shift ;;
        -h|--help) echo "$usage"; exit 0 ;;
        *) echo "workshop-update.bash: unknown option '$1'; $usage" >&2; exit 2 ;;
    esac
done

ensure_env
source_arg="${source_arg:-$cfg_updates_url}"
if [ -z "$source_arg" ]; then
    echo "workshop-update.bash: workshop.yml names no updates.git_url; pass --from with the organizer's git URL or the thumb drive's notebooks folder" >&2
    exit 2
fi
exec "$WORKSHOP_ENV_PYTHON" -P "$WORKSHOP_REPO/appliance/update.py" --from "$source_arg" \
    --branch "${branch_arg:-$cfg_updates_branch}" --notebooks "$cfg_notebooks_dir" ${extra[@]+"${extra[@]}"}
