"""The console's static files: a single-page app for people (`index.html`,
`app.js`, `app.css`), the page rendering the OpenAPI document (`api.html`,
`api.js`) and vendored browser code (`vendor/`, updated by
`scripts/vendor-console`). Served by `herder/api/console.py`."""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).parent / "static"
