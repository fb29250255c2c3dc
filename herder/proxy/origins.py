"""What keeps a daemon's pages out of the herder's origin (see `herder.proxy`).

- On the path route (`/daemon/v1/proxy/<Name>/…`) every response carries
  `Content-Security-Policy: SANDBOX`: the page and its scripts run in an
  opaque origin, so they can read nothing the herder's own pages store
  (local storage, cookies) and call the herder only as any other site can.
- On the host route (`<Name>.<PROXY_DOMAIN>`), the daemon has an origin of
  its own and no sandbox.
- Either way, a daemon's `Set-Cookie` stays its own: `Domain` is dropped
  (a cookie for the whole domain would reach the herder and every other
  daemon), and on the path route `Path` is put under the daemon's prefix.
"""

from __future__ import annotations

SANDBOX = (
    "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads "
    "allow-popups-to-escape-sandbox"
)


def scope_cookie(value: str, prefix: str) -> str:
    """A daemon's `Set-Cookie` value without `Domain`, and with its `Path`
    under `prefix` (the path route; "" on the host route leaves it)."""
    parts = value.split(";")
    kept = [parts[0].strip()]
    path = None
    for attribute in parts[1:]:
        name, _, rest = attribute.strip().partition("=")
        lowered = name.strip().lower()
        if lowered == "domain":
            continue
        if lowered == "path":
            path = rest.strip()
            continue
        if attribute.strip():
            kept.append(attribute.strip())
    if prefix:
        path = prefix + (path if path and path.startswith("/") else "/")
    if path is not None:
        kept.insert(1, f"Path={path}")
    return "; ".join(kept)


def daemon_on_host(host: str, domain: str) -> str | None:
    """The daemon name a request's `Host` designates under `domain`
    (`<name>.<domain>[:port]`), or None."""
    if not domain or not host:
        return None
    name = host.lower()
    if name.endswith("]") or name.count(":") > 1:
        return None  # an IPv6 literal
    name = name.rsplit(":", 1)[0] if ":" in name else name
    suffix = "." + domain
    if not name.endswith(suffix) or len(name) == len(suffix):
        return None
    return name[: -len(suffix)]
