"""The reverse proxy into daemons: `ANY /daemon/v1/proxy/{name}/{path}`.

Requests go to the daemon's first container port at the address recorded in
the registry when it was spawned, and nowhere else. Bodies are streamed both
ways (never read whole, so `client_max_size` does not apply: aiohttp enforces
it only in `read()`, `post()` and `json()`), WebSocket upgrades are relayed
frame by frame, the prefix is stripped, `X-Forwarded-*` are set, hop-by-hop
headers and the caller's credentials (`Authorization`, `Cookie`, `?token=`)
are dropped, and a `Location` pointing into the daemon is rewritten under the
prefix. A client's own `Forwarded` and `X-Real-IP` are dropped (`X-Real-IP`
is the peer the herder saw). No daemon page runs in the herder's origin: the
path route is sandboxed, `<Name>.<proxy_domain>` is the daemon's own origin
and daemon cookies stay the daemon's (`herder.proxy.origins`). Plain GETs and HEADs (no body) take the lean client
(`herder.proxy.lean`); everything else goes through one aiohttp session.

`{name}` is the container name `<name>-<jti>`; with a valid token the
caller's own plain `<name>` works too when it picks exactly one running
daemon. Public by default (a daemon publishes its web port);
`proxy_require_token` makes it owner-only.

- `front`: the front door on `herder serve`'s socket: plain GETs and HEADs
  answered without aiohttp's server (`wire`: its heads in and out; `links`:
  its callback-driven keep-alive connections to daemons), anything else
  handed to aiohttp.
- `forward`: the header rules and the three relay paths (aiohttp, lean, WebSocket).
- `upstreams`: the client session, the lean pool and the daemon lookup cache.
- `lean`: the lean HTTP/1.1 client for plain GETs and HEADs.
- `origins`: the sandbox policy, daemon cookies, the daemon a host names.
- The route and the lookup of `{name}` are in `herder.api.proxy`.
"""
