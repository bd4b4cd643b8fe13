#!/usr/bin/env bash
# Local mode: get the organizer's newer notebooks into notebooks/, keeping your edits.
#
#   local/workshop-update.bash                    # from workshop.yml's updates.git_url
#   local/workshop-update.bash --from FOLDER      # from a new thumb drive's notebooks repository
#
# Notebooks you edited stay as they are; where the organizer changed one of them too, their
# version lands beside yours as <name>-updated.ipynb. New notebooks arrive. Running it again
# changes nothing. The work is in appliance/update.py (nbgitpuller's merge), started by local/local_mode.py.
for python in python3.13 python3.12 python3.11 python3 python; do
    # the first that runs (a pyenv shim may not) and can run the module (3.8 or later)
    if "$python" -c 'import sys; sys.exit(sys.version_info < (3, 8))' >/dev/null 2>&1; then
        exec "$python" -I "$(dirname "${BASH_SOURCE[0]}")/local_mode.py" update "$@"
    fi
done
echo "workshop-update.bash: no Python 3 on PATH; run local/setup.bash first" >&2
exit 2
