"""`appliance assets place`: copy verified cached assets to Keras's cache and the notebooks."""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.commands.fetch import add_config_and_cache, cache_of
from appliance.config import load_config
from appliance.errors import ApplianceError
from appliance.placement import default_keras_home, failure_line, place_assets


def register(subparsers: argparse._SubParsersAction) -> None:
    assets = subparsers.add_parser("assets", help="work with the cached assets")
    actions = assets.add_subparsers(dest="assets_command", metavar="ACTION", required=True)
    place = actions.add_parser(
        "place",
        help="put the cached assets where Keras and the notebooks look for them",
        description="Hard-link (or copy) each verified asset from the cache to its `place`: "
        "keras/<x> -> KERAS_HOME/<x>, notebooks/<x> -> NOTEBOOKS/<x>. Files already there are left alone.",
    )
    add_config_and_cache(place)
    place.add_argument("--keras-home", type=Path, default=None, metavar="DIR",
                       help="Keras's cache directory (default: $KERAS_HOME or ~/.keras)")
    place.add_argument("--notebooks", type=Path, default=None, metavar="DIR",
                       help="the notebooks directory (default: jupyter.root of workshop.yml)")
    place.set_defaults(run=run_place)


def run_place(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    cache = cache_of(args, loaded)
    keras_home = args.keras_home or default_keras_home()
    notebooks = args.notebooks or loaded.notebooks_dir
    assets = [asset for asset in loaded.included_assets() if asset.kind != "installer"]
    results = place_assets(assets, cache, keras_home, notebooks)
    for result in results:
        note = f"  ({result.note})" if result.note else ""
        print(f"{result.status:9}  {result.name} -> {result.dest}{note}")
    problem = failure_line(results, cache)
    if problem:
        raise ApplianceError(problem)
    return 0
