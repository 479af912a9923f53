"""The wire between the engine process and its frontend processes: batches of records over a Unix socket.

A frame is a 4-byte length and a pickled list of tuples. Both ends are this daemon's own processes, and the socket
sits in a directory only the daemon's user can open, so pickle may carry the records. One frame holds every record
one side had ready in a loop iteration: under load, a decode step's tokens for all of a frontend's streams travel
as one write, not one per stream.

Records, frontend to engine:
- ("listening", index) once its server is bound, or ("bind_failed", index, error);
- ("open", call_id, request bytes, invocation metadata, peer): a Generate call;
- ("cancel", call_id): its client cancelled, or its deadline passed.
Engine to frontend:
- ("message", call_id, response bytes);
- ("end", call_id, status code name, details, trailing metadata): the last record of a call.
"""

import asyncio
import contextlib
import pickle
import struct

import structlog

_LENGTH = struct.Struct("!I")
MAX_UNREAD_BYTES = 64 * 1024 * 1024  # ~64 MB of messages, far more than a step's for thousands of streams

log = structlog.get_logger("awqd")

# The metadata key of a forwarded call's client address. The engine believes it only on its Unix socket.
PEER_KEY = "x-awqd-peer"

Record = tuple


async def read_batch(reader: asyncio.StreamReader) -> list[Record] | None:
    """The next frame's records; None when the other end closed the connection."""
    try:
        (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
        return pickle.loads(await reader.readexactly(length))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


class Outbox:
    """Records sent from the loop, written as one frame once the loop has run what was ready with them."""

    def __init__(self, writer: asyncio.StreamWriter):
        self._writer = writer
        self._records: list[Record] = []

    def send(self, record: Record) -> None:
        self._records.append(record)
        if len(self._records) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        records, self._records = self._records, []
        if not records or self._writer.is_closing():
            return  # the other end is gone; its reader has seen EOF and ends its calls
        frame = pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL)
        self._writer.write(_LENGTH.pack(len(frame)) + frame)
        if self._writer.transport.get_write_buffer_size() > MAX_UNREAD_BYTES:
            # The other end stopped reading (a frontend stopped or hung): drop it rather than buffer without bound.
            # Its reader sees the connection end, and each side ends that connection's calls.
            log.error("relay_peer_not_reading", unread_bytes=self._writer.transport.get_write_buffer_size())
            self._writer.transport.abort()

    async def close(self) -> None:
        self._flush()
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()
