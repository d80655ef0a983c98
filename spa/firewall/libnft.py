"""A minimal ctypes binding to libnftables: one context, commands in, text out.

Why ctypes and not the ``nft`` program: a grant must be applied in well under
a millisecond, and a process spawn costs ~2.7 ms. Why not pyroute2: it is a
large dependency whose nftables support is partial (no concatenated set keys
or element comments at the level we need), while libnftables is the reference
implementation that ships with the ``nft`` tool on every host we target.

One :class:`Nft` holds one ``struct nft_ctx``. libnftables opens its netlink
socket when the context is created and keeps it until ``nft_ctx_free``; a
table created with ``flags owner`` is bound to that socket, so the context
must live exactly as long as the daemon that owns the grant table.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import threading
from typing import Any

from spa.errors import SpaError

from . import netlink

# Output flags from <nftables/libnftables.h>.
OUTPUT_HANDLE = 1 << 3
OUTPUT_JSON = 1 << 4
OUTPUT_NUMERIC_ALL = (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10)

LIBRARY_NAMES = ("libnftables.so.1", "libnftables.so")


class NftError(SpaError):
    """libnftables refused a command; the message is nft's own, one line."""


def _load() -> ctypes.CDLL:
    errors: list[str] = []
    names = list(LIBRARY_NAMES)
    found = ctypes.util.find_library("nftables")
    if found:
        names.append(found)
    for name in names:
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as error:
            errors.append(str(error))
            continue
        _declare(lib)
        return lib
    raise NftError(
        "libnftables not found (install the libnftables1 package): " + "; ".join(errors)
    )


def _declare(lib: ctypes.CDLL) -> None:
    """Give every function we call its C signature (ctypes guesses int otherwise)."""
    ctx = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_new.restype = ctx
    lib.nft_ctx_free.argtypes = [ctx]
    lib.nft_ctx_free.restype = None
    lib.nft_ctx_buffer_output.argtypes = [ctx]
    lib.nft_ctx_buffer_output.restype = ctypes.c_int
    lib.nft_ctx_buffer_error.argtypes = [ctx]
    lib.nft_ctx_buffer_error.restype = ctypes.c_int
    lib.nft_ctx_get_output_buffer.argtypes = [ctx]
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctx]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_output_get_flags.argtypes = [ctx]
    lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
    lib.nft_ctx_output_set_flags.argtypes = [ctx, ctypes.c_uint]
    lib.nft_ctx_output_set_flags.restype = None
    lib.nft_run_cmd_from_buffer.argtypes = [ctx, ctypes.c_char_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int


class Nft:
    """One libnftables context: run nft commands (text or JSON) in-process.

    Not thread-safe in libnftables itself, so calls are serialised with a lock.
    Output and errors are buffered in the context and returned, never printed.
    """

    def __init__(self) -> None:
        self._lib = _load()
        handle = self._lib.nft_ctx_new(0)
        if not handle:
            raise NftError("nft_ctx_new failed (out of memory or no netlink)")
        self._ctx: int | None = handle
        self._lock = threading.Lock()
        self._lib.nft_ctx_buffer_output(handle)
        self._lib.nft_ctx_buffer_error(handle)
        self._ran = False
        self.netlink_fd: int | None = None  # the context's own socket, once known (see run)

    def run(self, commands: str, *, json_output: bool = False) -> str:
        """Run nft commands (one transaction per call); return buffered output.

        Raises :class:`NftError` with nft's message when the batch is refused;
        a refused batch changes nothing (nftables applies it all or not at all).
        """
        with self._lock:
            ctx = self._require()
            flags = OUTPUT_NUMERIC_ALL | (OUTPUT_JSON if json_output else 0)
            self._lib.nft_ctx_output_set_flags(ctx, flags)
            # libnftables opens its netlink socket at the first command; the
            # one that appears then is this context's (netlink.py's fast path
            # must use exactly that socket: it owns the grant table).
            before = None if self._ran else set(netlink.netfilter_socket_fds())
            status = self._lib.nft_run_cmd_from_buffer(ctx, commands.encode())
            if before is not None:
                self._ran = True
                new = set(netlink.netfilter_socket_fds()) - before
                self.netlink_fd = new.pop() if len(new) == 1 else None
            output = (self._lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
            error = (self._lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
        if status != 0:
            first = next((line for line in error.splitlines() if line.strip()), "")
            # Name the first command, not a script's leading comment.
            command = next((line.strip() for line in commands.splitlines()
                            if line.strip() and not line.lstrip().startswith("#")), "")
            raise NftError(f"nft refused {command!r}: {first or 'error'}")
        return output

    def run_json(self, commands: str) -> Any:
        """Run a listing command and decode its JSON output (``{}`` if empty)."""
        output = self.run(commands, json_output=True)
        return json.loads(output) if output.strip() else {}

    def close(self) -> None:
        """Free the context; this closes its netlink socket (an owned table goes)."""
        with self._lock:
            if self._ctx is not None:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None

    def _require(self) -> int:
        if self._ctx is None:
            raise NftError("nftables context already closed")
        return self._ctx

    def __enter__(self) -> Nft:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
