"""The wheel carries what the herder reads at run time: every package,
migrations, image files and the console's static files.

Installed from a wheel (no repository beside it), the app must import (a
package missing from pyproject's list fails here), `herder db upgrade` must
find the Alembic scripts and `herder images` must find the Dockerfiles.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_migrations_and_image_files(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
         "--disable-pip-version-check", "-w", str(wheels), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("herder-*.whl")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
         "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERDER_")}
    env.update(PYTHONPATH=str(target), HERDER_DATA_DIR=str(tmp_path / "data"))
    where = subprocess.run(
        [sys.executable, "-c",
         "import herder, herder.app, herder.cli, herder.bundled as b; "
         "print(herder.__file__); print(herder.app.__file__); "
         "print(b.migrations_dir()); print(b.images_dir())"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    module, app, migrations, images = (Path(line) for line in where.stdout.split())
    assert module.is_relative_to(target) and app.is_relative_to(target)
    assert migrations.is_relative_to(target) and (migrations / "env.py").is_file()
    assert images.is_relative_to(target)
    for build in (ROOT / "images").iterdir():
        shipped = {p.name for p in (images / build.name).iterdir() if p.name != "__pycache__"}
        assert shipped == {p.name for p in build.iterdir() if p.name != "__pycache__"}, build
    console = ROOT / "herder" / "console" / "static"
    for path in console.rglob("*"):
        if path.is_file():
            shipped = target / "herder" / "console" / "static" / path.relative_to(console)
            assert shipped.read_bytes() == path.read_bytes(), path
    upgrade = subprocess.run(
        [sys.executable, "-m", "herder", "db", "upgrade"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert upgrade.returncode == 0, upgrade.stderr
    assert (tmp_path / "data" / "herder.db").is_file()
