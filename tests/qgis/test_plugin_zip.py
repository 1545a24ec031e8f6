"""The installable zip is self-contained: the plugin runs from it with only its vendored rsclip_core."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

from conftest import REPO_ROOT

from qgis_plugin import deps

CHECK = textwrap.dedent(
    """
    import sys
    from qgis.core import QgsApplication
    app = QgsApplication([], False)
    app.initQgis()
    import rsclip
    rsclip.bootstrap_paths()
    import rsclip_core
    from rsclip_core.inference import load_classes, run_search
    assert rsclip_core.__file__.startswith(sys.argv[1]), rsclip_core.__file__
    assert len(load_classes()) >= 8
    from rsclip.processing_provider import RsclipProvider
    provider = RsclipProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    assert len(provider.algorithms()) == 3
    run = run_search(sys.argv[2], "green", model_dir=sys.argv[3], top_k=3, out_gpkg=sys.argv[4])
    assert len(run.hits) == 3
    assert "torch" not in sys.modules
    print("zip-ok")
    """
)


def test_zip_contents_and_standalone_run(tmp_path, raster_path, model_dir):
    out = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "build_plugin_zip.sh"), str(tmp_path / "dist")],
                         capture_output=True, text=True, check=True)
    archives = list((tmp_path / "dist").glob("rsclip-*.zip"))
    assert len(archives) == 1, out.stdout
    with zipfile.ZipFile(archives[0]) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "plugins")
    for required in ("rsclip/__init__.py", "rsclip/metadata.txt", "rsclip/icon.png", "rsclip/LICENSE",
                     "rsclip/vendor/rsclip_core/spec.py", "rsclip/vendor/rsclip_core/inference/runs.py",
                     "rsclip/vendor/resources/classes/landcover.yaml"):
        assert required in names
    assert not [n for n in names if "/rsclip_core/" in n and "/inference/" not in n
                and not n.endswith(("rsclip_core/__init__.py", "rsclip_core/spec.py", "rsclip_core/py.typed"))]
    assert not [n for n in names if "__pycache__" in n or "/deps/" in n]

    plugins = tmp_path / "plugins"
    env = dict(os.environ, PYTHONPATH=str(plugins), QT_QPA_PLATFORM="offscreen",
               RSCLIP_QGIS_DEPS_DIR=str(deps.default_deps_dir()))
    result = subprocess.run(
        [sys.executable, "-c", CHECK, str(plugins), str(raster_path), str(model_dir), str(tmp_path / "hits.gpkg")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )
    assert "zip-ok" in result.stdout, result.stderr[-3000:]
