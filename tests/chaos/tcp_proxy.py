"""A small asyncio TCP proxy that a test puts between botrelay and a service, to cut the network.

    async with TCPProxy("127.0.0.1", 5672) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        ...
        await proxy.cut()        # close every open connection, refuse new ones
        await asyncio.sleep(3)
        proxy.heal()             # accept again

        proxy.stall()            # a black hole: connections stay open, no byte gets through
        proxy.heal()             # what was held back flows again

While cut, new connections are accepted and closed at once (the client sees a reset, as with a
firewall rejecting), so clients fail fast instead of waiting for a timeout. While stalled, nothing
is read or forwarded and new connections are held unanswered: clients only find out by timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


class TCPProxy:
    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = 0
        self.refusing = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.connections_made = 0
        self.connections_cut = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TCPProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, template: str) -> str:
        """``template`` with ``{port}`` replaced by the proxy's port."""
        return template.replace("{port}", str(self.port))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            _abort(writer)
            return
        self._writers.add(writer)
        await self._flowing.wait()
        self._writers.discard(writer)
        if writer.is_closing():
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host,
                                                                 self.target_port)
        except OSError:
            _abort(writer)
            return
        self.connections_made += 1
        self._writers.update((writer, up_writer))
        pumps = [asyncio.create_task(self._pump(reader, up_writer)),
                 asyncio.create_task(self._pump(up_reader, writer))]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            for w in (writer, up_writer):
                self._writers.discard(w)
                _abort(w)
            self._tasks.difference_update(pumps)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                await self._flowing.wait()
                data = await reader.read(65536)
                if not data:
                    return
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()

    async def cut(self) -> int:
        """Reset every open connection and refuse new ones until ``heal``; how many were cut."""
        self.refusing = True
        writers = list(self._writers)
        for writer in writers:
            _abort(writer)
        self._writers.clear()
        cut = len(writers) // 2
        self.connections_cut += cut
        await asyncio.sleep(0)
        return cut

    def stall(self) -> None:
        """Stop every byte in both directions, and hold new connections, until ``heal``."""
        self._flowing.clear()

    def heal(self) -> None:
        self.refusing = False
        self._flowing.set()

    async def close(self) -> None:
        self.refusing = True
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            _abort(writer)
        self._flowing.set()  # held connections see theirs closed and end
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a dropped network or a killed peer looks."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
