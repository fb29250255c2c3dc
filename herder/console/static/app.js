// The herder console: a single page on the herder's API.
//
// The token lives in this tab's sessionStorage and goes out only as an
// `Authorization: Bearer` header (never in a URL: the attach socket gets a
// single-use ticket instead). A 401 from any call returns to the sign-in.
"use strict";

(function () {
  const TOKEN_KEY = "herder.token";
  const $ = (id) => document.getElementById(id);
  const state = {
    page: null,
    daemons: [],
    config: null,
    nodes: null,
    logs: null, // AbortController of the log follow
    socket: null,
    term: null,
    fit: null,
    timers: [],
    granted: 0,
  };

  // -- the API ---------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  async function api(path, options) {
    const opts = options || {};
    const headers = new Headers(opts.headers || {});
    const t = opts.token || token();
    if (t) headers.set("Authorization", "Bearer " + t);
    let resp;
    try {
      resp = await fetch(path, {
        method: opts.method || "GET",
        body: opts.body,
        headers: headers,
        signal: opts.signal,
        cache: "no-store",
        credentials: "omit",
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "the herder cannot be reached (" + err.message + ")");
    }
    if (!resp.ok) {
      let message = resp.status + " " + resp.statusText;
      try {
        const body = await resp.json();
        if (body && body.error) message = body.error;
      } catch (_) { /* not JSON */ }
      const error = new ApiError(resp.status, message);
      if (resp.status === 401 && !opts.token) signOut(message);
      throw error;
    }
    if (opts.raw) return resp;
    const type = resp.headers.get("Content-Type") || "";
    return type.startsWith("application/json") ? resp.json() : resp.text();
  }

  function showError(err) {
    if (err && err.name === "AbortError") return;
    if (err instanceof ApiError && err.status === 401) return; // the sign-in shows it
    $("error-text").textContent = err instanceof Error ? err.message : String(err);
    $("error").hidden = false;
  }

  function guarded(fn) {
    return function (event) {
      if (event && event.preventDefault) event.preventDefault();
      Promise.resolve()
        .then(() => fn.call(this, event))
        .catch(showError);
    };
  }

  // -- small DOM helpers -----------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function age(seconds) {
    const s = Math.max(0, Math.floor(Date.now() / 1000 - seconds));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    if (s < 86400) return Math.floor(s / 3600) + " h";
    return Math.floor(s / 86400) + " d";
  }

  function confirmAction(text) {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    return new Promise((resolve) => {
      const done = (answer) => () => {
        $("confirm-ok").onclick = $("confirm-cancel").onclick = dialog.oncancel = null;
        dialog.close();
        resolve(answer);
      };
      $("confirm-ok").onclick = done(true);
      $("confirm-cancel").onclick = done(false);
      dialog.oncancel = done(false);
      dialog.showModal();
    });
  }

  function every(ms, fn) {
    const tick = () => fn().catch(showError);
    tick();
    state.timers.push(setInterval(tick, ms));
  }

  function stopTimers() {
    state.timers.forEach(clearInterval);
    state.timers = [];
  }

  // -- sign in and out -------------------------------------------------------

  async function signIn(event) {
    event.preventDefault();
    const given = $("signin-token").value.trim();
    const message = $("signin-message");
    message.hidden = true;
    try {
      await api("/token/v1/balance", { token: given });
    } catch (err) {
      message.textContent = "Sign-in failed: " + err.message;
      message.hidden = false;
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, given);
    $("signin-token").value = "";
    enter();
  }

  function signOut(reason) {
    sessionStorage.removeItem(TOKEN_KEY);
    leavePage();
    $("main").hidden = $("nav").hidden = $("who").hidden = true;
    $("error").hidden = true;
    $("signin").hidden = false;
    const message = $("signin-message");
    message.textContent = reason ? "Signed out: " + reason : "";
    message.hidden = !reason;
  }

  function enter() {
    $("signin").hidden = true;
    $("main").hidden = $("nav").hidden = $("who").hidden = false;
    route();
  }

  async function refreshWho() {
    const me = await api("/token/v1/balance");
    $("who-email").textContent = me.email;
    $("who-credits").textContent = me.credits;
    state.granted = me.granted;
    return me;
  }

  // -- pages -----------------------------------------------------------------

  const pages = {
    daemons: showDaemons,
    terminal: showTerminal,
    minions: showMinions,
    golems: showGolems,
    credits: showCredits,
    node: showNode,
  };

  function leavePage() {
    stopTimers();
    stopLogs();
    closeSocket("not connected");
  }

  function route() {
    if (!token()) return signOut(null);
    const [name, arg] = (location.hash.slice(1) || "daemons").split("/");
    const page = pages[name] ? name : "daemons";
    leavePage();
    state.page = page;
    document.querySelectorAll(".page").forEach((p) => (p.hidden = p.id !== "page-" + page));
    document.querySelectorAll("#nav a[data-page]").forEach((a) =>
      a.classList.toggle("active", a.dataset.page === page)
    );
    refreshWho().catch(showError);
    pages[page](arg ? decodeURIComponent(arg) : null).catch(showError);
  }

  async function loadConfig() {
    if (!state.config) state.config = await api("/console/config.json");
    return state.config;
  }

  async function loadNodes() {
    if (!state.nodes) state.nodes = await api("/node/v1/nodes");
    return state.nodes;
  }

  // -- daemons ---------------------------------------------------------------

  function containerName(d) {
    return (d.Names && d.Names[0] ? d.Names[0] : d.Id).replace(/^\//, "");
  }

  // The first port goes through the herder's proxy: on the daemon's own origin,
  // `<Name>.<PROXY_DOMAIN>` on the herder's port, when the herder has one (see
  // the README's "Proxy and attach"), else on the path route; the other ports
  // link to their published host ports.
  function proxyLink(name, config) {
    if (!config.proxy_domain) return "/daemon/v1/proxy/" + encodeURIComponent(name) + "/";
    const port = location.port ? ":" + location.port : "";
    return location.protocol + "//" + name.toLowerCase() + "." + config.proxy_domain + port + "/";
  }

  function portLinks(d, config) {
    const name = containerName(d);
    const cell = el("td", { class: "ports" });
    const ports = (d.Ports || []).filter((p) => p.PrivatePort);
    const seen = new Set();
    ports.forEach((p, i) => {
      if (seen.has(p.PrivatePort)) return;
      seen.add(p.PrivatePort);
      const first = seen.size === 1;
      const href = first
        ? proxyLink(name, config)
        : p.PublicPort ? location.protocol + "//" + location.hostname + ":" + p.PublicPort + "/" : null;
      const label = p.PrivatePort + (p.PublicPort ? "→" + p.PublicPort : "");
      cell.append(
        href
          ? el("a", { href: href, target: "_blank", rel: "noopener noreferrer", class: "port",
                      title: first ? "through the herder's proxy" : "the published port" },
            label)
          : el("span", { class: "port" }, label),
        " "
      );
    });
    return cell;
  }

  function daemonRow(d, config, nodes) {
    const name = containerName(d);
    const plain = (d.Labels && d.Labels["herder.name"]) || name;
    const group = (d.Labels && d.Labels["herder.group"]) || "";
    // On a cluster each daemon names its node; on one engine, that engine's host.
    const nodeName = d.Node ? d.Node.Hostname : nodes.length === 1 ? nodes[0].Hostname : "";
    return el(
      "tr",
      { "data-name": plain, "data-container": name },
      el("td", { class: "name" }, plain),
      el("td", { class: "state state-" + d.State }, d.State),
      el("td", {}, d.Image),
      el("td", {}, group),
      portLinks(d, config),
      el("td", {}, nodeName),
      el("td", {}, age(d.Created)),
      el(
        "td",
        { class: "actions" },
        el("button", { type: "button", class: "logs", onclick: guarded(() => startLogs(plain)) }, "Logs"),
        el("a", { class: "button terminal", href: "#terminal/" + encodeURIComponent(plain) }, "Terminal"),
        el("button", { type: "button", class: "kill", onclick: guarded(() => killDaemon(plain, false)) }, "Kill"),
        el("button", { type: "button", class: "wipe danger", onclick: guarded(() => killDaemon(plain, true)) }, "Kill + wipe")
      )
    );
  }

  async function listDaemons() {
    const [daemons, config, nodes] = await Promise.all([
      api("/daemon/v1/ls"),
      loadConfig(),
      loadNodes().catch(() => []),
    ]);
    state.daemons = daemons;
    const body = $("daemons-table").querySelector("tbody");
    body.replaceChildren(...daemons.map((d) => daemonRow(d, config, nodes)));
    $("daemons-empty").hidden = daemons.length > 0;
    return daemons;
  }

  async function showDaemons() {
    every(5000, listDaemons);
  }

  async function spawnDaemon(event) {
    const form = event.target;
    const data = new FormData();
    const name = form.elements.name.value.trim();
    data.append("name", name);
    data.append("image", form.elements.image.value.trim());
    const ports = form.elements.ports.value
      .split(/[\s,]+/)
      .filter(Boolean)
      .map((p) => (/^\d+$/.test(p) ? Number(p) : p));
    data.append("ports", JSON.stringify(ports));
    const group = form.elements.group.value.trim();
    if (group) data.append("group", group);
    for (const file of form.elements.files.files) data.append(file.name, file, file.name);
    const button = form.querySelector("button[type=submit]");
    const result = $("spawn-result");
    button.disabled = true;
    result.hidden = false;
    result.textContent = "Spawning " + name + "…";
    try {
      const spawned = await api("/daemon/v1/spawn", { method: "POST", body: data });
      const ports = Object.entries(spawned.Ports).map(([c, h]) => c + "→" + h).join(", ");
      result.textContent = "Spawned " + spawned.Name + (ports ? " (" + ports + ")" : "");
      await listDaemons();
    } catch (err) {
      result.textContent = "Spawn failed: " + err.message;
      throw err;
    } finally {
      button.disabled = false;
    }
  }

  async function killDaemon(name, wipe) {
    const question = wipe
      ? "Kill " + name + " and delete its data? This cannot be undone."
      : "Kill " + name + "? Its data is kept.";
    if (!(await confirmAction(question))) return;
    const killed = await api("/daemon/v1/kill/" + encodeURIComponent(name) + (wipe ? "?wipe=true" : ""), {
      method: "POST",
    });
    const result = $("kill-result");
    result.textContent = "Killed " + (killed.Killed.join(", ") || name) +
      (killed.Wiped ? " and deleted its data." : "; its data is kept for the next " + name + ".");
    result.hidden = false;
    await listDaemons();
  }

  function stopLogs() {
    if (state.logs) state.logs.abort();
    state.logs = null;
    $("logs-stop").disabled = true;
  }

  async function startLogs(name) {
    stopLogs();
    const controller = new AbortController();
    state.logs = controller;
    const out = $("logs");
    out.textContent = "";
    $("logs-name").textContent = name;
    const tail = Math.max(0, Number($("logs-tail").value) || 0);
    const follow = $("logs-follow").checked;
    $("logs-stop").disabled = !follow;
    const url = "/daemon/v1/logs/" + encodeURIComponent(name) + "?tail=" + tail + (follow ? "&follow=1" : "");
    const resp = await api(url, { raw: true, signal: controller.signal });
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        out.append(decoder.decode(value, { stream: true }));
        out.scrollTop = out.scrollHeight;
      }
    } catch (err) {
      if (err.name !== "AbortError") throw err;
    } finally {
      if (state.logs === controller) stopLogs();
    }
  }

  // -- terminal --------------------------------------------------------------

  function closeSocket(status) {
    if (state.socket) {
      const socket = state.socket;
      state.socket = null;
      socket.onclose = null;
      socket.close(1000);
    }
    if (status) $("term-status").textContent = status;
    $("term-connect").textContent = "Connect";
  }

  function ensureTerminal() {
    if (state.term) return state.term;
    const term = new window.Terminal({ convertEol: true, scrollback: 5000, cursorBlink: true });
    const fit = new window.FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open($("terminal"));
    term.onData((data) => {
      const socket = state.socket;
      if (!socket || socket.readyState !== WebSocket.OPEN) return;
      // No TTY in a daemon: Enter is a newline, and echo is ours to do.
      const text = data.replace(/\r/g, "\n");
      if ($("term-echo").checked) term.write(text.replace(/\x7f/g, "\b \b"));
      socket.send(text);
    });
    // Fitted to its box whenever the box changes (the window, the layout). The
    // size stays on the page: a daemon has no TTY, so the attach socket carries
    // no resize.
    const showSize = () => ($("term-size").textContent = term.cols + "×" + term.rows);
    term.onResize(showSize);
    new ResizeObserver(() => {
      try { fit.fit(); } catch (_) { /* hidden */ }
    }).observe($("terminal"));
    showSize();
    state.term = term;
    state.fit = fit;
    return term;
  }

  async function connectTerminal() {
    const name = $("term-daemon").value;
    if (!name) throw new Error("no daemon to attach to: spawn one first");
    closeSocket("connecting to " + name + "…");
    const term = ensureTerminal();
    term.reset();
    const { ticket } = await api("/daemon/v1/attach-ticket/" + encodeURIComponent(name), {
      method: "POST",
    });
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = scheme + "//" + location.host + "/daemon/v1/attach/" + encodeURIComponent(name) +
      "?binary=1&tail=200&ticket=" + encodeURIComponent(ticket);
    const socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    state.socket = socket;
    socket.onopen = () => {
      $("term-status").textContent = "connected to " + name;
      $("term-connect").textContent = "Reconnect";
      term.focus();
    };
    socket.onmessage = (event) => {
      term.write(typeof event.data === "string" ? event.data : new Uint8Array(event.data));
    };
    socket.onclose = (event) => {
      if (state.socket !== socket) return;
      state.socket = null;
      $("term-status").textContent =
        "disconnected (" + event.code + (event.reason ? ": " + event.reason : "") + ")";
      $("term-connect").textContent = "Reconnect";
    };
  }

  async function showTerminal(name) {
    const daemons = await api("/daemon/v1/ls");
    const select = $("term-daemon");
    const names = daemons.map((d) => (d.Labels && d.Labels["herder.name"]) || containerName(d));
    select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
    if (name && names.includes(name)) select.value = name;
    ensureTerminal();
    state.fit.fit();
    if (name && names.includes(name)) await connectTerminal();
  }

  // -- minions ---------------------------------------------------------------

  const SAMPLES = {
    python: [["main.sh", "python3 main.py\n"], ["main.py", 'print("hello from a minion")\n']],
    node: [["main.sh", "node main.js\n"], ["main.js", 'console.log("hello from a minion");\n']],
    ruby: [["main.sh", "ruby main.rb\n"], ["main.rb", 'puts "hello from a minion"\n']],
  };

  function fileEditor(name, text) {
    const box = el(
      "div",
      { class: "file" },
      el("div", { class: "row" },
        el("input", { class: "file-name", value: name, placeholder: "file name", "aria-label": "file name" }),
        el("button", { type: "button", onclick: () => box.remove() }, "Remove")),
      el("textarea", { class: "file-text", rows: 6, spellcheck: "false", "aria-label": "file text" })
    );
    box.querySelector("textarea").value = text;
    return box;
  }

  function loadSample(env) {
    const files = SAMPLES[env] || [["main.sh", "echo hello from a minion\n"]];
    $("minion-files").replaceChildren(...files.map(([n, t]) => fileEditor(n, t)));
  }

  async function showMinions() {
    const select = $("minion-env");
    if (!select.options.length) {
      const { envs } = await api("/minion/v1/envs");
      select.replaceChildren(
        ...envs.map((e) => el("option", { value: e.name }, e.name + (e.available ? "" : " (no image)")))
      );
      loadSample(select.value);
    }
  }

  async function runMinion() {
    const data = new FormData();
    data.append("env", $("minion-env").value);
    const output = $("minion-output").value.trim();
    if (output) data.append("output", output);
    for (const box of $("minion-files").querySelectorAll(".file")) {
      const name = box.querySelector(".file-name").value.trim();
      if (name) data.append(name, new Blob([box.querySelector(".file-text").value]), name);
    }
    const button = $("minion-run");
    button.disabled = true;
    button.textContent = "Running…";
    try {
      const resp = await api("/minion/v1/spawn", { method: "POST", body: data, raw: true });
      const link = $("minion-download");
      link.hidden = true;
      $("minion-result").hidden = false;
      $("minion-exit").textContent = resp.headers.get("X-Minion-Exit-Code") || "";
      $("minion-duration").textContent = resp.headers.get("X-Minion-Duration") || "";
      if (output) {
        const blob = await resp.blob();
        if (link.href) URL.revokeObjectURL(link.href);
        link.href = URL.createObjectURL(blob);
        link.download = output.split("/").pop();
        link.textContent = "download " + output + " (" + blob.size + " bytes)";
        link.hidden = false;
        $("minion-stdout").textContent = "";
        $("minion-stderr").textContent = "";
      } else {
        const run = await resp.json();
        $("minion-exit").textContent = run.ExitCode;
        $("minion-duration").textContent = run.Duration;
        $("minion-stdout").textContent = run.StdOut;
        $("minion-stderr").textContent = run.StdErr;
      }
      refreshWho().catch(showError);
    } finally {
      button.disabled = false;
      button.textContent = "Run";
    }
  }

  // -- golems ----------------------------------------------------------------

  async function listGolems() {
    const [golems, config] = await Promise.all([api("/golem/v1/ls"), loadConfig()]);
    const base = config.webstrates_url.replace(/\/$/, "");
    const act = (verb, w) => guarded(async () => {
      if (verb === "kill" && !(await confirmAction("Kill the golem of " + w + "?"))) return;
      await golemAction(verb, w);
    });
    const rows = golems.map((g) =>
      el("tr", { "data-webstrate": g.Webstrate },
        el("td", {}, el("a", { href: base + "/" + encodeURIComponent(g.Webstrate), target: "_blank",
                               rel: "noopener noreferrer" }, g.Webstrate)),
        el("td", { class: "state state-" + g.State }, g.State),
        el("td", {}, g.Status),
        el("td", { class: "connected" }, g.Connected ? "connected" : "not connected"),
        el("td", {}, age(g.Created)),
        el("td", { class: "actions" },
          el("button", { type: "button", onclick: act("reset", g.Webstrate) }, "Reset"),
          el("button", { type: "button", class: "danger", onclick: act("kill", g.Webstrate) }, "Kill")))
    );
    $("golems-table").querySelector("tbody").replaceChildren(...rows);
    $("golems-empty").hidden = golems.length > 0;
  }

  async function showGolems() {
    every(5000, listGolems);
  }

  const GOLEM_DONE = { spawn: "started", reset: "restarted", kill: "killed" };

  async function golemAction(verb, webstrate) {
    const result = $("golem-result");
    result.hidden = false;
    result.textContent = { spawn: "Starting", reset: "Restarting", kill: "Stopping" }[verb] +
      " the golem of " + webstrate + "…";
    try {
      await api("/golem/v1/" + verb + "/" + encodeURIComponent(webstrate), { method: "POST" });
    } catch (err) {
      result.textContent = "The golem of " + webstrate + " was not " + GOLEM_DONE[verb] + ": " +
        err.message;
      throw err;
    }
    result.textContent = "The golem of " + webstrate + " was " + GOLEM_DONE[verb] + ".";
    await listGolems();
  }

  async function spawnGolem(event) {
    await golemAction("spawn", event.target.elements.webstrate.value.trim());
  }

  // -- credits ---------------------------------------------------------------

  async function refreshCredits() {
    const [usage, me] = await Promise.all([api("/token/v1/charges?limit=20"), refreshWho()]);
    $("credits-balance").textContent = usage.credits;
    $("credits-granted").textContent = me.granted;
    const meter = $("credits-meter");
    meter.max = Math.max(1, me.granted);
    meter.value = Math.max(0, usage.credits);
    $("credits-rate").textContent = usage.rate;
    $("credits-running").textContent = usage.running.length
      ? usage.running.map((w) => w.kind + " " + w.name).join(", ")
      : "nothing";
    $("credits-updated").textContent = new Date().toLocaleTimeString();
    $("charges-table").querySelector("tbody").replaceChildren(
      ...usage.charges.map((c) =>
        el("tr", {},
          el("td", {}, new Date(c.at).toLocaleString()),
          el("td", {}, c.kind),
          el("td", {}, c.workload),
          el("td", {}, c.seconds),
          el("td", {}, c.credits)))
    );
  }

  async function showCredits() {
    every(1000, refreshCredits);
  }

  // -- node ------------------------------------------------------------------

  function flatten(prefix, value, rows) {
    if (value && typeof value === "object" && !Array.isArray(value)) {
      for (const [k, v] of Object.entries(value)) flatten(prefix ? prefix + " " + k : k, v, rows);
    } else if (Array.isArray(value)) {
      rows.push([prefix, value.length ? value.map((v) => (typeof v === "object" ? JSON.stringify(v) : v)).join("; ") : "none"]);
    } else {
      rows.push([prefix, /Bytes$/.test(prefix) && typeof value === "number" ? bytes(value) : String(value)]);
    }
    return rows;
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return n.toFixed(i ? 1 : 0) + " " + units[i];
  }

  function nodeRow(n) {
    const workloads = (n.Workloads || []).map((w) => w.Name + " (" + w.Kind + ", " + w.State + ")");
    return el("tr", { "data-node": n.ID },
      el("td", { class: "hostname" }, n.Hostname),
      el("td", { class: "id", title: n.ID }, n.ID.slice(0, 12)),
      el("td", {}, n.Address || "–"),
      el("td", {}, (n.Role || "–") + (n.Leader && n.Role === "manager" ? " (leader)" : "")),
      el("td", {}, n.Availability || "–"),
      el("td", {}, n.State || "–"),
      el("td", { class: "cpus" }, n.CPUs),
      el("td", { class: "memory" }, bytes(n.MemoryBytes)),
      el("td", { class: "gpus" }, n.GPUs),
      el("td", { class: "workloads" }, workloads.length ? workloads.join(", ") : "none"));
  }

  async function showNode() {
    state.nodes = null;
    const [specs, nodes] = await Promise.all([api("/node/v1/specs"), loadNodes()]);
    $("node-table").querySelector("tbody").replaceChildren(
      ...flatten("", specs, []).map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v)))
    );
    $("nodes-table").querySelector("tbody").replaceChildren(...nodes.map(nodeRow));
    $("nodes-count").textContent = nodes.length === 1 ? "one node" : nodes.length + " nodes";
  }

  // -- start -----------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", signIn);
    $("signout").addEventListener("click", () => signOut(null));
    $("error-close").addEventListener("click", () => ($("error").hidden = true));
    $("spawn-form").addEventListener("submit", guarded(spawnDaemon));
    $("logs-stop").addEventListener("click", stopLogs);
    $("term-connect").addEventListener("click", guarded(connectTerminal));
    $("minion-form").addEventListener("submit", guarded(runMinion));
    $("minion-add").addEventListener("click", () => $("minion-files").append(fileEditor("", "")));
    $("minion-env").addEventListener("change", (e) => loadSample(e.target.value));
    $("golem-form").addEventListener("submit", guarded(spawnGolem));
    window.addEventListener("hashchange", route);
    if (token()) enter();
    else signOut(null);
  });
})();
