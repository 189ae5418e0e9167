"""The Jupyter kernels the build executes chapters on: papermill's ``kernel_manager_class``.

Two changes from jupyter_client's ``AsyncKernelManager``, each for a measured reason:

1. **The client never waits on a socket for more than** ``POLL_S`` **at a time.** papermill used to hang
   forever, now and then, after a cell that draws through ``interact()``/``interactive()``: the kernel idle,
   its reply already sent. The reply was sitting in the client's shell socket (``ZMQ_EVENTS`` said so), but
   the file descriptor asyncio watches never became readable, so nbclient's one unbounded wait for it
   (``execution_timeout=None`` in full mode) never woke. pyzmq's asyncio layer learns of new messages only
   from that edge-triggered descriptor, and nbclient's stand-in for the Output widget sends ``comm_msg`` on
   the same socket while the wait is pending, one per output the widget draws: a wake-up can be lost.
   A fresh ``poll()`` reads ``ZMQ_EVENTS`` itself, so waiting in slices turns the endless wait into a delay
   of at most ``POLL_S``. Measured with a widget-heavy notebook under CPU load: 8 of 24 runs hung without
   this, 0 of 35 with it (``tests/test_kernels.py`` repeats the stress).
2. **No receive limit on the client's sockets.** ZMQ's publisher drops messages when the subscriber's queue
   and its own (1,000 each by default) are full; a cell that creates hundreds of widgets on a loaded CPU
   filled them, its final "idle" was lost, and papermill failed the chapter after its IOPub timeout.
3. **Unix sockets in a private folder instead of TCP ports** (where the platform has them): no port can be
   taken by another process between being chosen and being bound, and the kernel's warning about
   unencrypted TCP does not apply. This alone does not prevent the hang above.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from queue import Empty

import zmq
import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.manager import AsyncKernelManager
from traitlets import Type, default

POLL_S = 1.0


class SlicedWaitChannel(AsyncZMQSocketChannel):
    """``get_msg`` as jupyter_client's, but waiting in slices of ``POLL_S``, a new poll each time."""

    async def get_msg(self, timeout: float | None = None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - time.monotonic()))
            if await self.socket.poll(int(step * 1000)):
                return await self._recv()
            if deadline is not None and time.monotonic() >= deadline:
                raise Empty


class KernelClient(AsyncKernelClient):
    @default("context")
    def _context_default(self) -> zmq.asyncio.Context:
        # No receive limit on this client's sockets: ZMQ drops a publisher's messages once the subscriber's
        # queue (1,000 by default) and its own are full, and a widget cell's hundreds of comm messages on
        # a loaded CPU filled them: the cell's final "idle" was lost and papermill failed the chapter.
        context = super()._context_default()
        context.setsockopt(zmq.RCVHWM, 0)
        return context

    shell_channel_class = Type(SlicedWaitChannel)
    iopub_channel_class = Type(SlicedWaitChannel)
    stdin_channel_class = Type(SlicedWaitChannel)
    control_channel_class = Type(SlicedWaitChannel)


class KernelManager(AsyncKernelManager):
    """A kernel on Unix sockets (TCP on Windows) whose client waits in slices; pass it to papermill as
    ``kernel_manager_class``."""

    # AsyncKernelManager gives client_factory a fixed default: setting client_class alone is ignored.
    client_factory = Type(KernelClient, klass=AsyncKernelClient)

    @default("transport")
    def _transport_default(self) -> str:
        return "tcp" if sys.platform == "win32" else "ipc"

    @default("ip")
    def _ip_default(self) -> str:
        if self.transport != "ipc":
            return super()._ip_default()
        # Absolute and short (a socket path holds at most 107 bytes): the kernel and papermill run in
        # different folders, so a relative path would name two different files.
        self._socket_dir = tempfile.mkdtemp(prefix="latentbook-kernel-")
        return os.path.join(self._socket_dir, "k")

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart)
        if not restart and getattr(self, "_socket_dir", None):
            shutil.rmtree(self._socket_dir, ignore_errors=True)
