"""Time verifying the asset cache: full hashing vs. the verified-stamp fast path.

Makes random files of the real assets' sizes (from assets.yml) in a temporary cache, with
their hashes in the manifest's algorithms, then prints the time of each pass.
Run: .venv/bin/python bench/asset_cache.py
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

from appliance.assets import check_cached
from appliance.manifest import load_manifest

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    assets = [a for a in load_manifest(ROOT / "assets.yml").assets if a.kind != "installer"]
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        made = []
        for asset in assets:
            data = os.urandom(asset.size or 1_000_000)
            (cache / asset.name).write_bytes(data)
            algorithm = asset.algorithm or "sha256"
            made.append(asset.model_copy(update={"hash": f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"}))
        total = sum((cache / a.name).stat().st_size for a in made)
        for label in ("first check (hashes every file)", "second check (stamps)"):
            start = time.perf_counter()
            statuses = [check_cached(a, cache).status for a in made]
            elapsed = time.perf_counter() - start
            print(f"{label}: {elapsed:.3f} s for {len(made)} files, {total / 1e6:.0f} MB -> {statuses}")


if __name__ == "__main__":
    main()
