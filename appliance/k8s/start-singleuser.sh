#!/bin/sh
# The single-user image's entry point (docker-stacks convention): give the participant's home
# the workshop's notebooks without overwriting anything already there, then start the server.
# With arguments (Zero to JupyterHub passes its singleuser.cmd, `jupyterhub-singleuser` by
# default) it runs them; without, jupyterhub-singleuser when a hub started the container
# (JUPYTERHUB_API_TOKEN set), else JupyterLab, which always asks for a token.
set -eu
pristine=/opt/workshop/notebooks-pristine
data=/opt/workshop/data/notebooks
notebooks="${HOME:?}/notebooks"
mkdir -p "$notebooks" "$HOME/logs"
# -n: a notebook the participant already has (edited or not) is never replaced; new ones arrive.
cp -R -n "$pristine/." "$notebooks/"
# Data files the notebooks read next to themselves: links into the read-only assets layer, so a
# home volume holds no copy of them (a participant's own file of the same name is kept).
if [ -d "$data" ]; then
    cp -R -n -s "$data/." "$notebooks/"
fi
cd "$notebooks"
if [ "$#" -gt 0 ]; then
    exec "$@"
fi
if [ -n "${JUPYTERHUB_API_TOKEN:-}" ]; then
    exec jupyterhub-singleuser
fi
if [ -n "${JUPYTER_TOKEN+set}" ] && [ -z "$JUPYTER_TOKEN" ]; then
    echo "workshop-start: JUPYTER_TOKEN is empty; give a token (or leave it unset and Jupyter makes one)" >&2
    exit 2
fi
# Without JUPYTER_TOKEN, Jupyter makes a random token and prints the URL that carries it.
exec jupyter lab --ip=0.0.0.0 --port="${JUPYTER_PORT:-8888}" --no-browser --ServerApp.root_dir="$notebooks"
