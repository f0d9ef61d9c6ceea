"""A loopback TCP forwarder for fault injection: put it between Parley and a real server,
then stop it (connection refused), make it swallow traffic (a hung server), close connections
unanswered (a front end that idles them out), hold what the server sends after its first bytes
(a stream that stalls mid-answer), or restart it."""

from __future__ import annotations

import asyncio
import contextlib


class _Dropped(Exception):
    pass


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, port: int, *, stall_after: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self.hang = False  # accept connections but never answer
        # This many next chat completion requests (on new or kept-alive connections): the
        # connection is closed on them unanswered.
        self.drop = 0
        # Bytes the server may send (over all connections) before the rest is held until `flow()`.
        self._allowance = stall_after
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Close the listener and cut every open connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            if self.hang:
                await asyncio.Event().wait()
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            try:
                await asyncio.gather(
                    self._pipe(reader, up_writer, requests=True), self._pipe(up_reader, writer, metered=True)
                )
            finally:
                up_writer.close()
        except (_Dropped, ConnectionError, OSError, asyncio.CancelledError):
            pass  # dropped, cut by stop(), or the peer went away: either way this connection is over
        finally:
            writer.close()
            self._pipes.discard(task)

    def flow(self) -> None:
        """Let everything through again."""
        self._allowance = None
        self._flowing.set()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        metered: bool = False,
        requests: bool = False,
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(1024 if metered else 65536):
                if requests and self.drop > 0 and data.startswith(b"POST /v1/chat/completions "):
                    self.drop -= 1
                    raise _Dropped  # out of both pipes: `_accept` closes the connection
                if metered and self._allowance is not None:
                    if self._allowance <= 0:
                        self._flowing.clear()
                        await self._flowing.wait()
                    else:
                        self._allowance -= len(data)
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            writer.write_eof()
