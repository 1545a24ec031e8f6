#!/usr/bin/env bash
# Build the installable QGIS plugin zip: dist/rsclip-<version>.zip (version from metadata.txt).
#   rsclip/                      the plugin (qgis_plugin/*.py, icon, LICENSE, metadata.txt)
#   rsclip/vendor/rsclip_core/   the torch-free inference package only: __init__.py, spec.py, prompts.py,
#                                preprocess.py, inference/, resources/ (its __init__.py, the default
#                                land-cover classes, the sample raster and the bundled model's files
#                                when there is one; Core ML .mlpackage folders are left out)
# Never included: the torch parts of rsclip_core, a deps/ folder left by older plugin versions
# (dependencies now live in the QGIS profile, <profile>/rsclip/deps), caches.
# Usage: bash scripts/build_plugin_zip.sh [OUT_DIR]      (default: dist)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-dist}"
PY="$(command -v python3)"
"$PY" - "$OUT_DIR" <<'PYEOF'
import configparser
import os
import sys
import zipfile
from pathlib import Path

out_dir = Path(sys.argv[1])
meta = configparser.ConfigParser()
meta.read("metadata.txt", encoding="utf-8")
version = meta["general"]["version"]
name = "rsclip"
skip_dirs = {"__pycache__", "deps", ".pytest_cache"}
skip_suffixes = {".pyc", ".pyo", ".npz"}

def files_under(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        # Core ML packages are for Apple apps, not QGIS: keep them out of the plugin.
        dirnames[:] = sorted(
            d for d in dirnames if d not in skip_dirs and not d.startswith(".") and not d.endswith(".mlpackage")
        )
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            if path.suffix not in skip_suffixes and not filename.startswith("."):
                yield path

entries = []  # (source, name in zip)
for path in files_under(Path("qgis_plugin")):
    entries.append((path, f"{name}/{path.relative_to('qgis_plugin')}"))
entries.append((Path("metadata.txt"), f"{name}/metadata.txt"))
vendor = f"{name}/vendor"
for path in (Path("rsclip_core/__init__.py"), Path("rsclip_core/spec.py"), Path("rsclip_core/prompts.py"),
             Path("rsclip_core/preprocess.py"), Path("rsclip_core/py.typed")):
    if path.is_file():
        entries.append((path, f"{vendor}/{path}"))
for path in files_under(Path("rsclip_core/inference")):
    entries.append((path, f"{vendor}/{path}"))
entries.append((Path("rsclip_core/resources/__init__.py"), f"{vendor}/rsclip_core/resources/__init__.py"))
for folder in (Path("rsclip_core/resources/classes"), Path("rsclip_core/resources/models/default"),
               Path("rsclip_core/resources/samples")):
    if folder.is_dir():
        for path in files_under(folder):
            entries.append((path, f"{vendor}/{path}"))

out_dir.mkdir(parents=True, exist_ok=True)
target = out_dir / f"{name}-{version}.zip"
tmp = target.with_name(target.name + ".partial")
with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
    for source, arcname in entries:
        archive.write(source, arcname)
os.replace(tmp, target)
size = target.stat().st_size
print(f"{target} ({len(entries)} files, {size / 1e6:.2f} MB)")
PYEOF
