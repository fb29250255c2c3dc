#!/bin/sh
# Run headless Chromium on the page in $GOLEM_URL, with the DevTools protocol
# reachable on the container's port 9222.
#
# Chromium's (new) headless mode ignores --remote-debugging-address and
# always listens on 127.0.0.1, so Chromium listens on 127.0.0.1:9223 and
# socat publishes it on 0.0.0.0:9222 for the herder.
#
# --no-sandbox: Chromium's own sandbox needs user namespaces (or a setuid
# helper), which a container with all capabilities dropped and
# no-new-privileges cannot give it. The container is the sandbox instead:
# the herder runs golems as uid 1000 with dropped capabilities,
# no-new-privileges, and memory/CPU/pids limits.
# --disable-dev-shm-usage: Docker's default /dev/shm is 64 MiB, too small for
# Chromium; it uses /tmp instead.
set -eu
socat TCP-LISTEN:9222,bind=0.0.0.0,fork,reuseaddr TCP:127.0.0.1:9223 &
exec chromium \
    --headless \
    --no-sandbox \
    --disable-gpu \
    --disable-dev-shm-usage \
    --no-first-run \
    --disable-background-networking \
    --disable-component-update \
    --disable-sync \
    --remote-debugging-port=9223 \
    --user-data-dir=/tmp/chromium \
    "${GOLEM_URL:-about:blank}"
