#!/usr/bin/env bash
# Local mode: get the organizer's newer notebooks into notebooks/, keeping your edits.
#
#   local/workshop-update.bash                    # from workshop.yml's updates.git_url
#   local/workshop-update.bash --from FOLDER      # from a new thumb drive's notebooks repository
#
# Notebooks you edited stay as they are; where the organizer changed one of them too, their
# version lands beside yours as <name>-updated.ipynb. New notebooks arrive. Running it again
# changes nothing. The work is in appliance/update.py (nbgitpuller's merge), started by local/local_mode.py.
# shellcheck source-path=SCRIPTDIR source=local-mode.bash
source "$(dirname "${BASH_SOURCE[0]}")/local-mode.bash"
run_local_mode update "run local/setup.bash first" "$@"
