"""Headless Chromium driven over the DevTools protocol, with aiohttp's websocket client.

Not Playwright: its wheel is 53 MB with a Node.js runtime inside, and it pins the browser protocol of its own
Chromium build; this is the Debian Chromium the test dependencies install, driven by the few protocol commands
a page test needs (navigate, evaluate, mouse, keys, screenshot). Nothing is downloaded and no network is used:
the flags switch off every background service, and the profile is a fresh directory.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars"]


class BrowserError(AssertionError):
    pass


class Chromium:
    """One headless browser with one page. ``async with Chromium(profile) as page: ...``"""

    def __init__(self, profile: Path, width: int = 1400, height: int = 900, executable: str = CHROMIUM):
        self.profile, self.width, self.height, self.executable = Path(profile), width, height, executable
        self.proc: subprocess.Popen | None = None
        self.errors: list[str] = []  # uncaught exceptions and console errors of the page
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}

    async def __aenter__(self) -> "Chromium":
        self.profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.executable, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
        port = await self._port()
        self._http = aiohttp.ClientSession()
        deadline = time.monotonic() + 30
        while True:
            async with self._http.get(f"http://127.0.0.1:{port}/json/list") as res:
                pages = [t for t in await res.json() if t.get("type") == "page"]
            if pages or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        if not pages:
            raise BrowserError("Chromium opened no page")
        self._ws = await self._http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        for domain in ("Page", "Runtime", "Log"):
            await self.send(f"{domain}.enable")
        await self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                        deviceScaleFactor=1, mobile=False)
        return self

    async def _port(self) -> int:
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrowserError(f"Chromium exited with {self.proc.returncode}")
            if marker.exists():
                lines = marker.read_text().split()
                if lines and lines[0].isdigit():
                    return int(lines[0])
            await asyncio.sleep(0.1)
        raise BrowserError("Chromium did not open its DevTools port within 60 s")

    async def __aexit__(self, *exc) -> None:
        try:
            self._reader.cancel()
            await self._ws.close()
            await self._http.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    async def _read(self) -> None:
        async for msg in self._ws:
            data = json.loads(msg.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            elif data.get("method") == "Runtime.exceptionThrown":
                details = data["params"]["exceptionDetails"]
                self.errors.append(details.get("exception", {}).get("description") or details.get("text", ""))
            elif data.get("method") == "Runtime.consoleAPICalled" and data["params"]["type"] == "error":
                self.errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                            for a in data["params"]["args"]))

    async def send(self, method: str, timeout: float = 60, **params) -> dict[str, Any]:
        msg_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        await self._ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        answer = await asyncio.wait_for(future, timeout)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited), as JSON."""
        result = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 60) -> Any:
        """Poll until ``expression`` is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = await self.evaluate(expression)
            except BrowserError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout:.0f}s waiting for {expression}; page errors {self.errors}")
            await asyncio.sleep(0.1)

    async def rect(self, selector: str) -> dict[str, float]:
        """The element's box in page coordinates (CSS pixels)."""
        box = await self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                                  f".getBoundingClientRect(); return {{x: r.left + scrollX, y: r.top + scrollY, "
                                  f"width: r.width, height: r.height}}; }})()")
        if not box or box["width"] <= 0:
            raise BrowserError(f"{selector} is not displayed")
        return box

    async def mouse(self, kind: str, x: float, y: float, button: str = "left", buttons: int = 0) -> None:
        await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button=button, buttons=buttons,
                        clickCount=1 if kind != "mouseMoved" else 0)

    async def click(self, x: float, y: float, button: str = "left") -> None:
        mask = {"left": 1, "right": 2}[button]
        await self.mouse("mouseMoved", x, y)
        await self.mouse("mousePressed", x, y, button, mask)
        await self.mouse("mouseReleased", x, y, button, 0)

    async def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 8) -> None:
        await self.mouse("mouseMoved", *start)
        await self.mouse("mousePressed", *start, "left", 1)
        for i in range(1, steps + 1):
            t = i / steps
            await self.mouse("mouseMoved", start[0] + (end[0] - start[0]) * t, start[1] + (end[1] - start[1]) * t,
                             "left", 1)
        await self.mouse("mouseReleased", *end, "left", 0)

    async def screenshot(self, clip: dict[str, float] | None = None, fmt: str = "png") -> bytes:
        """PNG (or ``fmt="jpeg"``, quality 90) of the page, or of ``clip`` (a :meth:`rect`)."""
        params: dict[str, Any] = {"format": fmt, **({"quality": 90} if fmt == "jpeg" else {})}
        if clip is not None:
            params["clip"] = {**clip, "scale": 1}
        return base64.b64decode((await self.send("Page.captureScreenshot", **params))["data"])
