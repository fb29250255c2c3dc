"""The console in a real browser (Debian's Chromium driven by Selenium through
chromedriver) against a real `herder serve` and the real Docker Engine.

One browser session walks the flows a person would: sign in, spawn a daemon
from the form (with an uploaded file), see it listed (node, age), open its
proxied page, follow its logs and read their tail, type into its terminal
and read the echo (also after the window shrinks, and after a reconnect,
which replays the recent output first), run a python minion in the
playground and download its output file, watch the balance fall while the
daemon runs, drive a golem (shown connected while its control socket is),
read the node and nodes tables, kill the daemon (cancel, kill keeping the
data, kill with wipe), and be sent back to the sign-in with a message by a
bad token. A second herder with `PROXY_DOMAIN` shows the port links to the
daemons' own hosts. A screenshot of each page goes to
tests/artifacts/console/ (git-ignored; the README's are copies in
docs/console/).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from herder.signing import INSTANCE_FILE, load_keypair
from herder.tokens import TokenService

from .conftest import make_settings
from .console_page import ARTIFACTS, WAIT, Page, selenium_chromium
from .images import build_on_busybox, ensure_busybox_image

ROOT = Path(__file__).resolve().parent.parent
HERDER = [sys.executable, "-m", "herder"]
DOWNLOADS = ARTIFACTS / "downloads"
# A daemon serving /minion on port 80 and echoing its stdin to its stdout.
WEB_IMAGE = "herder-test/busybox-console:1"
WEB_CMD = ["sh", "-c", "httpd -p 80 -h /minion && echo daemon ready && exec cat"]
# A golem stand-in that stays up (the page only lists and controls it).
GOLEM_IMAGE = "herder-test/busybox-golem:1"

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Herder:
    """A real `herder serve` on a free port with this session's instance id."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.settings = make_settings(data_dir)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, **settings: str) -> None:
        """Serve, with `settings` as `HERDER_*` variables on top of the test's own."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERDER_")}
        env.update(
            HERDER_DATA_DIR=str(self.data_dir),
            HERDER_HOST="127.0.0.1",
            HERDER_PORT=str(self.port),
            HERDER_PUBLIC_URL=self.url,
            HERDER_DAEMON_BIND_ADDRESS="127.0.0.1",
            HERDER_WEBSTRATES_URL="http://127.0.0.1:9",
            HERDER_GOLEM_IMAGE=GOLEM_IMAGE,
        )
        env.update({f"HERDER_{k.upper()}": v for k, v in settings.items()})
        with open(self.log, "wb") as log_file:
            self.proc = subprocess.Popen(
                [*HERDER, "serve"], env=env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"herder serve did not start:\n{self.log.read_text()}")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def golem_control_url(self, webstrate: str) -> str:
        """The golem's control socket, with the key its container was given."""
        instance = (self.data_dir / INSTANCE_FILE).read_text().strip()
        env = subprocess.run(
            ["docker", "inspect", "--format", "{{json .Config.Env}}",
             f"golem-{webstrate}-{instance}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        page = next(e for e in json.loads(env) if e.startswith("GOLEM_URL="))
        key = page.split("#herder-golem-key=", 1)[1]
        ws = self.url.replace("http://", "ws://")
        return f"{ws}/golem/v1/connect/{webstrate}?key={urllib.parse.quote(key)}"

    def token(self, email: str, credits: int) -> str:
        service = TokenService(load_keypair(self.data_dir), self.settings, ledger=None)  # type: ignore[arg-type]
        return service.create(email, credits, 1)[0]

    def call(
        self,
        method: str,
        path: str,
        token: str,
        body: Any = None,
        form: dict[str, str] | None = None,
    ) -> Any:
        """A JSON `body` or a `form`; the answer read as JSON (or text when it is not)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, method=method)
        request.add_header("Authorization", f"Bearer {token}")
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            request.add_header("Content-Type", "application/x-www-form-urlencoded")
        elif data is not None:
            request.add_header("Content-Type", "application/json")
        request.data = data
        with urllib.request.urlopen(request, timeout=30) as resp:
            answer = resp.read()
            json_answer = resp.headers.get_content_type() == "application/json"
        return json.loads(answer) if json_answer else answer.decode()


@contextmanager
def _held_websocket(url: str) -> Iterator[None]:
    """A WebSocket to `url`, held open by a thread of its own for the block."""
    box: dict[str, Any] = {}
    ready = threading.Event()

    async def hold() -> None:
        box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()
        try:
            async with aiohttp.ClientSession() as session, session.ws_connect(url):
                ready.set()
                await box["stop"].wait()
        except Exception as exc:  # handed to the test's thread
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=asyncio.run, args=(hold(),), daemon=True)
    thread.start()
    assert ready.wait(WAIT), f"no WebSocket to {url}"
    if "error" in box:
        raise box["error"]
    try:
        yield
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(WAIT)


def _or_none(call: Callable[[], Any]) -> Any:
    """What `call` returns, or None when its HTTP request fails (not up yet)."""
    try:
        return call()
    except OSError:
        return None


def _engine() -> tuple[str, str]:
    """The Docker Engine's host name and CPU count, from the engine itself."""
    shown = subprocess.run(
        ["docker", "info", "--format", "{{.Name}} {{.NCPU}}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return shown[0], shown[1]


@pytest.fixture(scope="module")
def herder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herder]:
    asyncio.run(ensure_busybox_image())
    build_on_busybox(WEB_IMAGE, WEB_CMD)
    build_on_busybox(GOLEM_IMAGE, ["sleep", "3600"])
    served = Herder(tmp_path_factory.mktemp("console"))
    served.start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    shutil.rmtree(DOWNLOADS, ignore_errors=True)
    DOWNLOADS.mkdir(parents=True)
    with selenium_chromium(tmp_path_factory.mktemp("chromium-profile"), DOWNLOADS) as driver:
        yield driver


def test_console_flows(herder: Herder, browser: WebDriver, tmp_path: Path) -> None:
    email = f"console-{secrets.token_hex(3)}@example.org"
    token = herder.token(email, credits=100_000)
    page = Page(browser, herder.url)

    # -- a bad token is refused at the sign-in, with a message
    browser.get(herder.url + "/console/")
    page.until(lambda: page.visible("#signin-form"), "no sign-in form")
    page.find("#signin-token").send_keys("not-a-token")
    page.find("#signin-form button[type=submit]").click()
    message = page.until(lambda: page.visible("#signin-message"), "no sign-in message")
    assert "Sign-in failed" in message.text and "token" in message.text
    page.shot("signin")

    # -- sign in
    page.sign_in(token)
    page.until(lambda: page.text("who-email") == email, "the subject is not shown")
    assert token not in browser.current_url

    # -- an API error is a readable message: a spawn of an image that is not here
    form = page.find("#spawn-form")
    form.find_element(By.NAME, "name").send_keys("web")
    form.find_element(By.NAME, "image").send_keys("no/such-image:1")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    page.until(lambda: page.visible("#error"), "no error shown")
    assert "no/such-image:1" in page.text("error-text")
    assert page.text("spawn-result").startswith("Spawn failed: ")
    page.find("#error-close").click()

    # -- spawn a daemon from the form, with an uploaded file
    index = tmp_path / "index.html"
    index.write_text("<h1>served by a console daemon</h1>\n")
    form.find_element(By.NAME, "image").clear()
    form.find_element(By.NAME, "image").send_keys(WEB_IMAGE)
    form.find_element(By.NAME, "ports").send_keys("80")
    form.find_element(By.NAME, "group").send_keys("site")
    form.find_element(By.NAME, "files").send_keys(str(index))
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    page.until(lambda: "Spawned web-" in page.text("spawn-result"), "the spawn did not answer")
    web = '#daemons-table tr[data-name="web"]'
    cells = page.until(
        lambda: [c.text for c in page.find(web).find_elements(By.TAG_NAME, "td")],
        "web is not listed",
    )
    assert cells[1] == "running" and cells[2] == WEB_IMAGE and cells[3] == "site", cells
    engine_host, engine_cpus = _engine()
    assert cells[5] == engine_host, cells  # one engine: its host is every daemon's node
    assert re.fullmatch(r"\d+ s", cells[6]), cells  # its age

    # -- its logs, followed: earlier output, then what it writes later
    page.click(f"{web} button.logs")
    page.until(lambda: "daemon ready" in page.text("logs"), "the logs did not show")
    herder.call(
        "POST",
        "/daemon/v1/exec/web",
        token,
        {"cmd": ["sh", "-c", "echo written later > /proc/1/fd/1"]},
    )
    page.until(lambda: "written later" in page.text("logs"), "the followed logs did not grow")
    page.shot("daemons")
    page.find("#logs-stop").click()
    page.until(lambda: not page.find("#logs-stop").is_enabled(), "the follow did not stop")
    # ... and the last line only, not followed
    page.find("#logs-tail").clear()
    page.find("#logs-tail").send_keys("1")
    page.find("#logs-follow").click()
    page.click(f"{web} button.logs")
    page.until(lambda: page.text("logs") == "written later", "the tail is not the last line")
    assert not page.find("#logs-stop").is_enabled()

    # -- its proxied page, in a tab of its own
    page.until(
        lambda: page.find(f"{web} a.port").get_attribute("rel") == "noopener noreferrer",
        "the proxied page would open with an opener",
    )
    console_tab = browser.current_window_handle
    page.click(f"{web} a.port")
    page.until(lambda: len(browser.window_handles) == 2, "the proxied page did not open")
    browser.switch_to.window([h for h in browser.window_handles if h != console_tab][0])
    page.until(
        lambda: "served by a console daemon" in browser.find_element(By.TAG_NAME, "h1").text,
        "the proxied page is not the uploaded file",
    )
    assert "/daemon/v1/proxy/web-" in browser.current_url
    # The token stayed behind (a sandboxed page, an opaque origin, has no storage at all).
    assert browser.execute_script(
        "try { return sessionStorage.getItem('herder.token') } catch (e) { return null }"
    ) is None  # fmt: skip
    browser.close()
    browser.switch_to.window(console_tab)

    # -- the terminal: type, and read the daemon's echo (local echo off)
    page.click(f"{web} a.terminal")
    page.until(lambda: page.visible("#page-terminal"), "the terminal page did not show")
    page.until(
        lambda: page.text("term-status") == "connected to web", "the terminal did not connect"
    )
    page.until(lambda: "daemon ready" in page.find(".xterm-rows").text, "no recent output first")
    page.find("#term-echo").click()
    page.find(".xterm-helper-textarea").send_keys("hello terminal\n")
    page.until(lambda: "hello terminal" in page.find(".xterm-rows").text, "no echo in the terminal")
    page.shot("terminal")
    # a smaller window while attached: the terminal is fitted again, still attached
    cols, rows = map(int, page.text("term-size").split("×"))
    browser.set_window_size(900, 640)
    page.until(
        lambda: [int(n) for n in page.text("term-size").split("×")] < [cols, rows],
        "the terminal was not fitted to the smaller window",
    )
    small_cols, small_rows = map(int, page.text("term-size").split("×"))
    assert small_cols < cols and small_rows < rows, (cols, rows, small_cols, small_rows)
    fitted = browser.execute_script(
        "const box = document.getElementById('terminal').getBoundingClientRect();"
        "const screen = document.querySelector('.xterm-screen').getBoundingClientRect();"
        "return [box.width, screen.width, box.height, screen.height,"
        " document.querySelectorAll('.xterm-rows > div').length]"
    )
    assert fitted[1] <= fitted[0] and fitted[3] <= fitted[2], fitted  # inside its box
    assert fitted[1] > 0.8 * fitted[0] and fitted[4] == small_rows, fitted  # and filling it
    page.find(".xterm-helper-textarea").send_keys("after resize\n")
    page.until(lambda: "after resize" in page.find(".xterm-rows").text, "no echo after a resize")
    assert page.text("term-status") == "connected to web"
    browser.set_window_size(1360, 900)
    page.until(lambda: page.text("term-size") == f"{cols}×{rows}", "not fitted back")
    page.find("#term-connect").click()  # reconnect: the recent output comes first again
    page.until(lambda: page.text("term-status") == "connected to web", "no reconnect")
    page.until(
        lambda: (
            "hello terminal" in page.find(".xterm-rows").text
            and "after resize" in page.find(".xterm-rows").text
        ),
        "no replay on reconnect",
    )
    page.find(".xterm-helper-textarea").send_keys("after reconnect\n")
    page.until(
        lambda: "after reconnect" in page.find(".xterm-rows").text, "no echo after a reconnect"
    )

    # -- a python minion in the playground
    page.go("minions", "minions")
    page.until(lambda: Select(page.find("#minion-env")).options, "no envs")
    Select(page.find("#minion-env")).select_by_value("python")
    boxes = browser.find_elements(By.CSS_SELECTOR, "#minion-files .file")
    names = [b.find_element(By.CSS_SELECTOR, ".file-name").get_attribute("value") for b in boxes]
    assert names == ["main.sh", "main.py"], names
    code = boxes[1].find_element(By.CSS_SELECTOR, ".file-text")
    code.clear()
    code.send_keys("import sys\nprint(6 * 7)\nprint('to stderr', file=sys.stderr)\n")
    page.find("#minion-run").click()
    page.until(lambda: page.text("minion-stdout") == "42", "the minion's stdout did not show")
    assert page.text("minion-exit") == "0" and page.text("minion-stderr") == "to stderr"
    assert float(page.text("minion-duration")) > 0
    # ... and one that hands back an output file, to download
    code.clear()
    code.send_keys("open('result.txt', 'w').write('made by a minion')\n")
    page.find("#minion-output").send_keys("result.txt")
    page.find("#minion-run").click()
    link = page.until(lambda: page.visible("#minion-download"), "no download link")
    assert link.text == "download result.txt (16 bytes)" and link.get_attribute("download")
    link.click()
    downloaded = DOWNLOADS / "result.txt"
    page.until(lambda: downloaded.is_file() and downloaded.read_text(), "nothing was downloaded")
    assert downloaded.read_text() == "made by a minion"
    page.shot("minions")

    # -- the balance falls while the daemon runs
    page.go("credits", "credits")
    page.until(lambda: page.text("credits-balance").isdigit(), "no balance")
    page.until(lambda: page.text("credits-rate") == "1", "the meter shows no rate")
    first = int(page.text("credits-balance"))
    page.until(
        lambda: int(page.text("credits-balance")) < first,
        "the balance did not fall without a reload",
    )
    page.until(
        lambda: "daemon" in page.find("#charges-table tbody").text, "no recent daemon charge"
    )
    page.shot("credits")

    # -- golems and node pages show
    page.go("golems", "golems")
    page.until(lambda: page.visible("#golems-empty"), "the golem list did not load")
    page.find("#golem-form input[name=webstrate]").send_keys("console-ws")
    page.find("#golem-form button[type=submit]").click()
    golem = '#golems-table tr[data-webstrate="console-ws"]'
    page.until(lambda: page.find(f"{golem} a").get_attribute("href") ==
               "http://127.0.0.1:9/console-ws", "the golem is not listed with its link")  # fmt: skip
    assert page.find(f"{golem} .connected").text == "not connected"
    page.until(
        lambda: page.text("golem-result") == "The golem of console-ws was started.", "no start"
    )
    page.until(lambda: page.find(f"{golem} .state").text == "running", "the golem is not running")
    # its control socket connected (as the golem's browser would, with its key): shown
    with _held_websocket(herder.golem_control_url("console-ws")):
        page.until(
            lambda: page.find(f"{golem} .connected").text == "connected", "not shown connected"
        )
        page.shot("golems")
    page.until(
        lambda: page.find(f"{golem} .connected").text == "not connected", "still shown connected"
    )
    page.click(f"{golem} button:not(.danger)")  # reset
    page.until(
        lambda: page.text("golem-result") == "The golem of console-ws was restarted.", "no reset"
    )
    page.click(f"{golem} button.danger")  # kill
    page.until(lambda: page.visible("#confirm"), "no confirmation")
    page.find("#confirm-ok").click()
    page.until(lambda: page.visible("#golems-empty"), "the golem is still listed")
    assert page.text("golem-result") == "The golem of console-ws was killed."
    page.go("node", "node")
    page.until(lambda: "CPU Count" in page.text("node-table"), "no node specs")
    node = page.until(lambda: page.find("#nodes-table tbody tr"), "no nodes table")
    shown = {
        c.get_attribute("class"): c.text for c in node.find_elements(By.CSS_SELECTOR, "td[class]")
    }
    assert shown["hostname"] == engine_host and shown["cpus"] == engine_cpus, shown
    assert shown["memory"].endswith("GiB") and shown["gpus"] == "0", shown
    assert re.fullmatch(r"web-\S+ \(daemon, running\)", shown["workloads"]), shown
    assert page.text("nodes-count") == "one node"
    page.shot("node")

    # -- kill it (and wipe), with a confirmation
    page.go("daemons", "daemons")
    page.click(f"{web} button.kill")
    dialog = page.until(lambda: page.visible("#confirm"), "no confirmation")
    assert "Its data is kept" in dialog.text
    page.find("#confirm-cancel").click()  # cancelled: nothing happens
    page.until(lambda: not page.visible("#confirm"), "the confirmation stayed")
    assert page.find(web) and len(herder.call("GET", "/daemon/v1/ls", token)) == 1
    page.click(f"{web} button.kill")
    page.until(lambda: page.visible("#confirm"), "no confirmation")
    page.find("#confirm-ok").click()
    page.until(lambda: page.visible("#daemons-empty"), "the daemon is still listed")
    assert "its data is kept" in page.text("kill-result")
    # spawned again, without a file: the uploaded page was kept
    browser.execute_script("document.querySelector('#spawn-form [name=files]').value = ''")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    page.until(lambda: page.find(web), "web is not listed again")
    kept = page.until(
        lambda: _or_none(lambda: herder.call("GET", "/daemon/v1/proxy/web/", token)),
        "web does not answer again",
    )
    assert "served by a console daemon" in kept
    page.click(f"{web} button.wipe")
    dialog = page.until(lambda: page.visible("#confirm"), "no confirmation")
    assert "delete its data" in dialog.text
    page.find("#confirm-ok").click()
    page.until(lambda: "deleted its data" in page.text("kill-result"), "no wipe shown")
    page.until(lambda: page.visible("#daemons-empty"), "the daemon is still listed")
    assert herder.call("GET", "/daemon/v1/ls", token) == []

    # -- the API page renders the document
    browser.get(herder.url + "/console/api")
    page.until(lambda: "/daemon/v1/spawn" in page.text("api-ops"), "the API page is empty")
    assert page.text("api-title").startswith("herder API")
    page.find("#post_daemon_v1_spawn summary").click()
    page.until(lambda: "multipart/form-data" in page.text("post_daemon_v1_spawn"), "no body")
    page.shot("api")

    # -- a token that goes bad returns to the sign-in with a message
    browser.get(herder.url + "/console/")
    page.until(lambda: page.visible("#page-daemons"), "the tab forgot its sign-in")
    browser.execute_script("sessionStorage.setItem('herder.token', arguments[0])", token + "x")
    browser.refresh()
    message = page.until(lambda: page.visible("#signin-message"), "a bad token kept the page")
    assert "Signed out" in message.text and "invalid token" in message.text
    assert browser.execute_script("return sessionStorage.getItem('herder.token')") is None

    # -- sign out forgets the token
    page.find("#signin-token").send_keys(token)
    page.find("#signin-form button[type=submit]").click()
    page.until(lambda: page.visible("#signout"), "no sign-out")
    page.find("#signout").click()
    page.until(lambda: page.visible("#signin-form"), "sign-out kept the page")
    assert browser.execute_script("return sessionStorage.length") == 0

    # -- and nothing the pages did broke their Content-Security-Policy
    logs = [entry["message"] for entry in browser.get_log("browser")]
    assert not [m for m in logs if "Content Security Policy" in m or "Refused to" in m], logs

    # -- a screenshot of each page is kept with the artifacts
    pages = {"signin", "daemons", "terminal", "minions", "credits", "golems", "node", "api"}
    assert page.shots == pages
    docs = os.environ.get("HERDER_CONSOLE_DOCS_DIR")
    if docs:  # refresh the README's copies: HERDER_CONSOLE_DOCS_DIR=docs/console
        for name in pages:
            shutil.copy(ARTIFACTS / f"{name}.png", Path(docs) / f"{name}.png")


def test_port_links_on_the_daemons_own_origin(
    herder: Herder, browser: WebDriver, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With `PROXY_DOMAIN`, a daemon's first port links to `<Name>.<domain>` on
    the herder's port (`localhost`: Chromium resolves `*.localhost` to itself)."""
    served = Herder(tmp_path_factory.mktemp("console-domain"))
    served.start(proxy_domain="localhost")
    try:
        token = served.token("domain@example.org", credits=10_000)
        form = {"name": "site", "image": WEB_IMAGE, "ports": "[80]",
                "index.html": "<h1>on an origin of its own</h1>"}  # fmt: skip
        name = served.call("POST", "/daemon/v1/spawn", token, form=form)["Name"]
        page = Page(browser, served.url)
        page.open_signed_in(token)
        link = '#daemons-table tr[data-name="site"] a.port'
        own = f"http://{name}.localhost:{served.port}/"
        page.until(lambda: page.find(link).get_attribute("href") == own, "no link to its host")
        console_tab = browser.current_window_handle
        page.click(link)
        page.until(lambda: len(browser.window_handles) == 2, "the daemon's page did not open")
        browser.switch_to.window([h for h in browser.window_handles if h != console_tab][0])
        page.until(
            lambda: "on an origin of its own" in browser.find_element(By.TAG_NAME, "h1").text,
            "the daemon's host did not serve its page",
        )
        assert browser.current_url == own
        # Its own origin: none of the console's storage.
        assert browser.execute_script("return sessionStorage.getItem('herder.token')") is None
        browser.close()
        browser.switch_to.window(console_tab)
        served.call("POST", "/daemon/v1/kill/site?wipe=true", token)
        page.until(lambda: page.visible("#daemons-empty"), "the daemon is still listed")
    finally:
        served.stop()
