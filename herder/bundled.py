"""Files the herder ships beside its code: Alembic migrations and image builds.

In the repository they are the top-level `migrations/` and `images/`; a wheel
carries them as the packages `herder.migrations` and `herder.imagefiles`
(see `package-dir` in pyproject.toml). An environment variable overrides both.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent


def bundled_dir(name: str, package: str, env: str) -> Path:
    """`$env` if set, else the installed package's directory, else the repo's `name/`."""
    override = os.environ.get(env)
    if override:
        return Path(override)
    try:
        spec = importlib.util.find_spec(package)
    except ModuleNotFoundError:
        spec = None
    # Namespace packages (no __init__.py) have search locations, not a file.
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location).is_dir():
            return Path(location)
    return _REPO / name


def migrations_dir() -> Path:
    return bundled_dir("migrations", "herder.migrations", "HERDER_MIGRATIONS_DIR")


def images_dir() -> Path:
    return bundled_dir("images", "herder.imagefiles", "HERDER_IMAGES_DIR")
