"""A real browser for the dashboard tests: Debian's Chromium driven by Playwright for Python, and a TCP proxy
between it and the server whose connections a test can cut and restore.

Chromium comes from Debian's `chromium` package (`make test-setup` installs it, as root through apt); it is
launched by path, since a browser download is impossible on these machines."""

from __future__ import annotations

import asyncio
import shutil
import threading

import pytest

CHROMIUM_ARGUMENTS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("the dashboard tests need Debian's chromium: run `make test-setup` (installs it through apt)")
    return found


class ConsoleWatch:
    """Every error a page logs (console errors and uncaught exceptions), with the URL it happened on."""

    def __init__(self, page):
        self.errors: list[str] = []
        self.paused = False
        page.on("console", lambda message: self._console(page, message))
        page.on("pageerror", lambda error: self._add(page, f"uncaught: {error}"))

    def _console(self, page, message) -> None:
        if message.type == "error":
            self._add(page, f"{message.text} ({message.location.get('url', '')})")

    def _add(self, page, text: str) -> None:
        if not self.paused:
            self.errors.append(f"{page.url}: {text}")


class CuttableProxy:
    """127.0.0.1:port → the server. `cut()` drops every open connection and holds new ones unanswered;
    `restore()` lets the held ones through. The browser sees a dropped connection, not a refused one."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.loop = asyncio.new_event_loop()
        self.connections: set[asyncio.StreamWriter] = set()
        self.held_requests = 0
        self.closing = False
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.open = asyncio.Event()
        self.open.set()
        self.server = self.loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _connection(self, client_reader, client_writer) -> None:
        if not self.open.is_set():
            self.held_requests += 1
            await self.open.wait()
        if self.closing:
            client_writer.transport.abort()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return
        self.connections |= {client_writer, server_writer}

        async def pipe(reader, writer):
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()
                self.connections.discard(writer)

        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))

    def cut(self) -> None:
        """Returns once every open connection is dropped (not merely asked to be)."""
        dropped = threading.Event()

        def drop():
            self.open.clear()
            for writer in list(self.connections):
                writer.transport.abort()
            self.connections.clear()
            dropped.set()
        self.loop.call_soon_threadsafe(drop)
        dropped.wait(10)

    def restore(self) -> None:
        self.loop.call_soon_threadsafe(self.open.set)

    def close(self) -> None:
        async def shut_down():  # every connection ends by itself once its sockets are gone
            self.closing = True
            self.server.close()
            for writer in list(self.connections):
                writer.transport.abort()
            self.open.set()
            await asyncio.sleep(0.3)
        asyncio.run_coroutine_threadsafe(shut_down(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def set_tab_hidden(page, hidden: bool) -> None:
    """What the page sees when its tab goes to the background (or comes back): document.hidden and a
    visibilitychange event. Headless Chromium keeps every tab visible, so the test says it."""
    page.evaluate("""(hidden) => {
        Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
        Object.defineProperty(document, "visibilityState", { configurable: true, get: () => hidden ? "hidden" : "visible" });
        document.dispatchEvent(new Event("visibilitychange"));
    }""", hidden)
