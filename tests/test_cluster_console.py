"""The console on the cluster lab (scripts/cluster-lab): a replica's node page
lists the three nodes with the caller's daemon on the node it runs on, and
the daemons page names that node. Lean: one daemon, one browser."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from .cluster_lab import Lab, call, token
from .console_page import Page, selenium_chromium

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NODES = ("hlab-node1", "hlab-node2", "hlab-node3")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    with selenium_chromium(tmp_path / "profile") as driver:
        yield driver


async def test_node_page_lists_the_clusters_nodes(lab: Lab, browser: WebDriver) -> None:
    tok = await token(lab, f"console-{secrets.token_hex(3)}@example.org")
    fields = {"name": "seen", "image": "hlab/httpd:1", "ports": "[80]", "node": NODES[1]}
    status, spawned = await call("POST", f"{lab.replicas[0]}/daemon/v1/spawn", tok, data=fields)
    assert status == 200, spawned
    try:
        page = Page(browser, lab.replicas[0])
        page.open_signed_in(tok)
        row = '#daemons-table tr[data-name="seen"]'
        page.until(
            lambda: page.find(row).find_elements(By.TAG_NAME, "td")[5].text == NODES[1],
            "the daemon's node is not shown",
        )
        page.go("node", "node")
        page.until(lambda: page.text("nodes-count") == "3 nodes", "not three nodes")
        rows = {
            r.find_element(By.CSS_SELECTOR, ".hostname").text: r.text
            for r in browser.find_elements(By.CSS_SELECTOR, "#nodes-table tbody tr")
        }
        assert sorted(rows) == list(NODES), rows
        assert f"{spawned['Name']} (daemon, running)" in rows[NODES[1]], rows
        assert rows[NODES[0]].endswith("none") and rows[NODES[2]].endswith("none"), rows
        assert spawned["Node"]["Address"] in rows[NODES[1]], rows  # its address
        assert sum("(leader)" in text for text in rows.values()) == 1, rows
        page.shot("node-cluster")
    finally:
        status, body = await call("POST", f"{lab.replicas[1]}/daemon/v1/kill/seen?wipe=true", tok)
        assert status == 200, body
