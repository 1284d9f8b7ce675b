"""The lean transport's frames: their layouts, and the socket that reads and writes them.

Memory follows the bytes that arrived, never the bytes a header announced: a body's buffer grows as
its data comes in (doubling from GROWTH_START_BYTES), so a header that claims 4 GB and sends nothing
costs nothing. Where the connection has a session key (a secret was proven), every frame carries a
MAC after its body (auth.FrameMac), which the receiver checks before it uses the frame.
"""
from __future__ import annotations

import socket
import struct
import sys

from semgap.wire.transport import auth

REQUEST = struct.Struct("<QBB")  # body_bytes, flags, op_bytes; then op (ASCII), body, [tag]
RESPONSE = struct.Struct("<QB")  # body_bytes, status; then body, [tag]
TAG = struct.Struct(f"<{auth.TAG_BYTES}s")
POST = 0x01
OK, ERROR = 0, 1
MAX_OP_BYTES = 255
# Small frames arrive through this buffer, several per recv when posts are pipelined; bodies larger
# than it are received straight into their own buffer.
RECEIVE_BUFFER_BYTES = 1 << 16
# A large body's buffer starts at this size and doubles as its data arrives, up to what it announced.
GROWTH_START_BYTES = 1 << 20
# A body up to this size is kept for reuse by the next body of the same size; a larger one (a 12 GB
# weight upload) is let go as soon as its receiver is done with it.
REUSE_MAX_BYTES = 1 << 30
_ZEROS = memoryview(bytes(GROWTH_START_BYTES))


class PeerClosed(ConnectionError):
    """The peer closed the connection; `mid_frame` when it did so inside a frame."""

    def __init__(self, message: str, mid_frame: bool):
        super().__init__(message)
        self.mid_frame = mid_frame


class ProtocolError(ValueError):
    """A frame that breaks the protocol: the connection cannot be trusted to stay in step."""


def set_kernel_timeout(sock: socket.socket, timeout_s: float) -> None:
    """Kernel send and receive timeouts on a blocking socket: no system call per send or receive, unlike
    Python's own socket timeouts (a poll before each); an expired one raises BlockingIOError."""
    seconds = int(timeout_s)
    value = struct.pack("ll", seconds, int((timeout_s - seconds) * 1e6))
    for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
        sock.setsockopt(socket.SOL_SOCKET, option, value)


class FramedSocket:
    """A connected socket with a receive buffer: exact reads of fixed fields, bodies in buffers of their own."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = bytearray(RECEIVE_BUFFER_BYTES)
        self.view = memoryview(self.buffer)
        self.start = self.end = 0  # the buffered bytes not read yet
        self.last_body: bytearray | None = None  # the last large body handed out, reused once released
        # Each direction's MAC once the handshake derived a session key; None without a secret.
        self.sending: auth.FrameMac | None = None
        self.receiving: auth.FrameMac | None = None

    def read_struct(self, layout: struct.Struct, frame_start: bool = False) -> tuple:
        self.fill(layout.size, frame_start)
        values = layout.unpack_from(self.buffer, self.start)
        self.start += layout.size
        return values

    def read_body(self, size: int) -> bytearray:
        """`size` bytes in a writable buffer that the caller owns (codec.decode maps tensors onto it)."""
        buffered = min(size, self.end - self.start)
        if size < RECEIVE_BUFFER_BYTES:
            self.fill(size)
            body = bytearray(self.view[self.start:self.start + size])
            self.start += size
            return body
        body = self._reused(size) or bytearray(max(buffered, min(size, GROWTH_START_BYTES)))
        body[:buffered] = self.view[self.start:self.start + buffered]
        self.start += buffered
        received = buffered
        while received < size:
            if received == len(body):
                _grow(body, min(size, 2 * len(body)))
            with memoryview(body)[received:] as target:  # released before the next growth
                count = self.sock.recv_into(target)
            if count == 0:
                raise PeerClosed(f"the peer closed the connection {received} bytes into a {size}-byte body", True)
            received += count
        if size <= REUSE_MAX_BYTES:
            self.last_body = body
        return body

    def _reused(self, size: int) -> bytearray | None:
        """The last large body if it has this size and its receiver has let go of it.

        A fresh buffer costs a page fault per 4 KiB page as it fills: 25 MB measured at 60 % of a
        reused buffer's throughput on loopback. Requests and answers repeat their sizes round after
        round, so the last large body is reused when nothing refers to it any more: no tensor maps
        it and no caller keeps it (CPython's reference count says so, exactly).
        """
        last, self.last_body = self.last_body, None
        if last is not None and len(last) == size and sys.getrefcount(last) == 2:  # `last` and the argument
            return last
        return None

    def read_tag(self, *parts) -> None:
        """Read the MAC that follows a frame made of `parts` and check it; ProtocolError if it does not match."""
        if self.receiving is None:
            return
        (tag,) = self.read_struct(TAG)
        if not self.receiving.verify(tag, *parts):
            raise ProtocolError("a frame failed its MAC (forged, altered, replayed or out of order)")

    def fill(self, count: int, frame_start: bool = False) -> None:
        if self.end - self.start >= count:
            return
        if self.start + count > len(self.buffer):  # move what is left to the front
            pending = self.end - self.start
            self.buffer[:pending] = self.view[self.start:self.end]
            self.start, self.end = 0, pending
        while self.end - self.start < count:
            received = self.sock.recv_into(self.view[self.end:])
            if received == 0:
                mid_frame = not frame_start or self.end > self.start
                raise PeerClosed(
                    f"the peer closed the connection {'inside a frame' if mid_frame else 'between frames'}", mid_frame
                )
            self.end += received

    def send_frame(self, *parts) -> None:
        """Send one frame, followed by its MAC where the connection has a session key."""
        if self.sending is not None:
            parts = (*parts, self.sending.tag(*parts))
        self.send(*parts)

    def send(self, *parts) -> None:
        """Send every part in order with as few system calls as the kernel allows, copying nothing."""
        views = [memoryview(part).cast("B") for part in parts if len(part)]
        while views:
            sent = self.sock.sendmsg(views)
            while views and sent >= len(views[0]):
                sent -= len(views.pop(0))
            if views and sent:
                views[0] = views[0][sent:]

    def close(self) -> None:
        self.last_body = None
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone
        self.sock.close()


def _grow(body: bytearray, size: int) -> None:
    """Extend `body` with zeros to `size` bytes (realloc: no copy of what it holds for large buffers)."""
    while len(body) < size:
        body += _ZEROS[:size - len(body)]
