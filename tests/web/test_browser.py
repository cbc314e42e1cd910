"""The dashboard in a real browser: headless Chromium, driven by selenium through Debian's
chromedriver, loads ``asgi-micro web`` (a process of its own, as a user starts it) in front
of the example greeter (another), lists it, calls ``Greeter.Hello`` through the form, and
follows a node that this test registers and withdraws over mDNS, without a reload."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from asgi_micro.registry import Node
from asgi_micro.registry import Service as ServiceRecord
from tests.browser import chromium, require_chromium
from tests.helpers import eventually, free_port, mdns
from tests.processes import GREETER, serving, spawn

pytestmark = pytest.mark.slow

T = TypeVar("T")


@contextlib.asynccontextmanager
async def dashboard() -> AsyncIterator[str]:
    """``asgi-micro web`` on a free loopback port, in the test's mDNS domain; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        process = await spawn("web", "--port", str(port), log=log)
        try:
            async with httpx.AsyncClient(trust_env=False) as http:

                async def up() -> bool:
                    if process.returncode is not None:
                        log.seek(0)
                        raise AssertionError(f"asgi-micro web exited:\n{log.read().decode()}")
                    try:
                        return (await http.get(url, timeout=2.0)).status_code == 200
                    except httpx.TransportError:
                        return False

                await eventually(up, timeout=60, interval=0.2, message="asgi-micro web serving")
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()


async def in_browser(action: Callable[[], T]) -> T:
    """Run a blocking WebDriver command off the event loop, which answers mDNS meanwhile."""
    return await asyncio.to_thread(action)


async def until_true(check: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    async def done() -> bool:
        return bool(await in_browser(check))

    await eventually(done, timeout=timeout, interval=0.2, message=what)


async def test_the_dashboard_in_a_browser(tmp_path: Path) -> None:
    require_chromium()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver

    def present(driver: WebDriver, selector: str) -> bool:
        return bool(driver.find_elements(By.CSS_SELECTOR, selector))

    async with serving(GREETER) as [greeter], dashboard() as url:
        with chromium(tmp_path / "profile") as opened:
            assert isinstance(opened, WebDriver)
            driver = opened
            await in_browser(lambda: driver.get(url))
            # The running greeter is listed; a fresh mDNS registry may take a moment to hear it.
            row = 'tr[data-service="greeter"]'
            await until_true(
                lambda: present(driver, row) or driver.refresh(), "greeter listed", timeout=30
            )
            cells = await in_browser(
                lambda: [c.text for c in driver.find_elements(By.CSS_SELECTOR, f"{row} td")]
            )
            assert cells == ["greeter", "1.0.0", "1"]

            await in_browser(lambda: driver.find_element(By.LINK_TEXT, "greeter").click())
            await until_true(lambda: present(driver, "#nodes"), "the greeter's page")
            health = 'tr[data-node] td[data-health="serving"]'
            assert await in_browser(lambda: present(driver, health))
            assert greeter.address in await in_browser(
                lambda: driver.find_element(By.ID, "nodes").text
            )

            # Greeter.Hello through its form.
            form = 'form.call[data-endpoint="Greeter.Hello"]'

            def fill_and_submit() -> None:
                textarea = driver.find_element(By.CSS_SELECTOR, f"{form} textarea")
                textarea.clear()
                textarea.send_keys('{"name":"Ada"}')
                driver.find_element(By.CSS_SELECTOR, f"{form} button").click()

            await in_browser(fill_and_submit)

            def reply() -> str:
                return str(driver.find_element(By.CSS_SELECTOR, f"{form} .reply").text)

            await until_true(lambda: "Hello Ada" in reply(), "the reply shown", timeout=30)
            assert (
                await in_browser(
                    lambda: driver.find_element(By.CSS_SELECTOR, f"{form} .reply").get_attribute(
                        "data-state"
                    )
                )
                == "ok"
            )
            screenshot = tmp_path / "dashboard.png"
            assert await in_browser(lambda: driver.save_screenshot(str(screenshot)))
            assert screenshot.stat().st_size > 0
            assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

            # The token field: sent with each call (here one the dashboard refuses, which
            # shows that it went), kept for the tab across a reload, and cleared again.
            def type_token(value: str) -> None:
                field = driver.find_element(By.ID, "token")
                field.send_keys(Keys.CONTROL, "a")
                field.send_keys(Keys.BACKSPACE)
                if value:
                    field.send_keys(value)

            await in_browser(lambda: type_token("not a token"))
            await in_browser(fill_and_submit)
            await until_true(lambda: "bearer token" in reply(), "the token sent", timeout=30)
            refused = await in_browser(lambda: driver.get_log("browser"))  # read, so cleared
            assert [entry["message"] for entry in refused if entry["level"] == "SEVERE"] == [
                f"{url}/api/call - Failed to load resource: the server responded with a status "
                "of 400 (Bad Request)"
            ]
            await in_browser(driver.refresh)
            await until_true(lambda: present(driver, form), "the page again")
            kept = await in_browser(
                lambda: driver.find_element(By.ID, "token").get_attribute("value")
            )
            assert kept == "not a token"
            await in_browser(lambda: type_token(""))
            await in_browser(fill_and_submit)
            await until_true(lambda: "Hello Ada" in reply(), "anonymous again", timeout=30)

            # A node comes and goes: the page follows without a reload.
            await until_true(
                lambda: (
                    driver.find_element(By.ID, "live-status").get_attribute("data-state") == "live"
                ),
                "the page listening",
            )
            node = Node(f"greeter-{uuid.uuid4()}", f"127.0.0.1:{free_port()}")
            record = ServiceRecord("greeter", "1.0.0", nodes=[node])
            joined = f'tr[data-node="{node.id}"]'
            async with mdns() as registry:
                await registry.register(record, ttl=60)
                await until_true(lambda: present(driver, joined), "the new node shown")
                assert await in_browser(
                    lambda: present(driver, f'{joined} td[data-health="unreachable"]')
                )
                driver_log = await in_browser(lambda: driver.get_log("browser"))
                assert not [entry for entry in driver_log if entry["level"] == "SEVERE"]
                await registry.deregister(record)
                await until_true(lambda: not present(driver, joined), "the node gone")
            await in_browser(lambda: driver.save_screenshot(str(tmp_path / "after.png")))
