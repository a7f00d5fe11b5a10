"""A TCP relay to a broker whose connections a test can cut, freeze or block, as a network can."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, Final, cast

# Long enough for a loaded CI machine to start a loop and bind a port.
_START_TIMEOUT_S: Final = 15.0


class Proxy:
    """A TCP relay on 127.0.0.1 to `target_port`, run on the caller's event loop."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.blocked = False
        self.blackholed = False
        self._live: list[asyncio.Transport] = []
        self._relays: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for relay in self._relays:
            relay.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Reset the current connections (both ends see the connection drop)."""
        for transport in self._live:
            transport.abort()
        self._live.clear()

    def freeze(self) -> None:
        """Stop relaying on the current connections: a peer gone without a FIN or RST."""
        for transport in self._live:
            transport.pause_reading()
        self._live.clear()

    def block(self) -> None:
        """Cut the current connections and reset every new one until `unblock()`: a link down."""
        self.blocked = True
        self.cut()

    def blackhole(self) -> None:
        """Relay nothing until `unblock()`: current connections freeze, new ones are accepted
        and then never answered, as behind a link that drops every packet. Frozen connections
        stay frozen after `unblock()`, as TCP connections across such an outage do."""
        self.blackholed = True
        self.freeze()

    def unblock(self) -> None:
        self.blocked = False
        self.blackholed = False

    async def _relay(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        if self.blocked:
            down_w.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        if self.blackholed:
            cast(asyncio.Transport, down_w.transport).pause_reading()
            try:
                await asyncio.get_running_loop().create_future()  # until __aexit__ cancels it
            finally:
                down_w.transport.abort()
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            down_w.transport.abort()
            return
        self._live += [cast(asyncio.Transport, w.transport) for w in (down_w, up_w)]
        try:
            await asyncio.gather(pump(down_r, up_w), pump(up_r, down_w))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for writer in (down_w, up_w):
                writer.transport.abort()


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.transport.abort()


class ThreadedProxy:
    """A `Proxy` on an event loop of its own thread, for tests whose clients are not asyncio.

    `with ThreadedProxy(port) as proxy:` then `proxy.block()`, `proxy.blackhole()`,
    `proxy.unblock()`, `proxy.cut()`
    from the test's thread; each returns once the relay has done it.
    """

    def __init__(self, target_port: int) -> None:
        self._proxy = Proxy(target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ThreadedProxy:
        self._thread.start()
        self._call_async(self._proxy.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._call_async(self._proxy.__aexit__())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_START_TIMEOUT_S)
            self._loop.close()

    @property
    def port(self) -> int:
        return self._proxy.port

    @property
    def url(self) -> str:
        return self._proxy.url

    def cut(self) -> None:
        self._call(self._proxy.cut)

    def block(self) -> None:
        self._call(self._proxy.block)

    def blackhole(self) -> None:
        self._call(self._proxy.blackhole)

    def unblock(self) -> None:
        self._call(self._proxy.unblock)

    def _call(self, action: Callable[[], None]) -> None:
        async def run() -> None:
            action()

        self._call_async(run())

    def _call_async(self, coro: Any) -> None:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            future.result(_START_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise
