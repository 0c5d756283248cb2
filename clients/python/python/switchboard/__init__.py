"""The switchboard client for Python, on asyncio.

The connection is the Rust client (`switchboard-client`), the same state machine as
the Rust and JavaScript clients: it reads, answers heartbeats, reconnects with
backoff, rejoins its rooms, resumes its session (same client id, every message it
missed) and resends what was queued while it was away, on threads of its own. This
package hands what it hears to your handlers on your asyncio loop.

    from switchboard import Client

    async with await Client.connect("ws://127.0.0.1:8080/ws") as client:
        @client.on("chat")
        async def on_chat(msg):
            print(msg.type, msg.payload, msg.from_id, msg.room)

        await client.join("general")
        await client.send("chat", {"text": "hi"}, room="general")
        total = await client.call("sum", {"numbers": [1, 2]})

Handlers run one at a time, in the order messages arrive; a slow handler delays the
next ones, never the connection. Messages wait for your loop in a queue of 65,536
(past it the oldest are dropped and counted in `Client.dropped`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import inspect
import itertools
import json
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Optional, Union

from . import _native

__all__ = [
    "Client",
    "Message",
    "Subscription",
    "SwitchboardError",
    "ConnectError",
    "NotConnectedError",
    "RequestTimeout",
    "RemoteError",
    "ConnectionLost",
    "QueueFull",
]

log = logging.getLogger("switchboard")

# Messages waiting for the handlers; past it, the oldest are dropped (and counted).
_QUEUE_MAX = 65_536

Handler = Callable[..., Union[None, Awaitable[None]]]


class SwitchboardError(Exception):
    """Every error of this package."""

    def __init__(self, message: str, code: Optional[str] = None, details: Any = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details


class ConnectError(SwitchboardError):
    """Connecting failed: unreachable, refused (`code`, e.g. `AUTH_FAILED`), timed out."""


class NotConnectedError(SwitchboardError):
    """The client is not connected (closed, or reconnecting without a queue)."""


class RequestTimeout(SwitchboardError, TimeoutError):
    """No answer within the timeout."""


class RemoteError(SwitchboardError):
    """The server answered with an error: `code` (`INVALID_PARAMS`, `UNKNOWN_METHOD`,
    the application's own), `message`, `details`."""

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ConnectionLost(SwitchboardError):
    """The connection dropped after a request was sent and before its answer came: the
    server may or may not have processed it."""


class QueueFull(SwitchboardError):
    """The queue of messages waiting for a reconnect is full."""


_ERRORS = {
    "connect": ConnectError,
    "not_connected": NotConnectedError,
    "timeout": RequestTimeout,
    "remote": RemoteError,
    "connection_lost": ConnectionLost,
    "queue_full": QueueFull,
}


def _error(kind: str, code: str, message: str, details: str) -> SwitchboardError:
    cls = _ERRORS.get(kind, SwitchboardError)
    return cls(message, code or None, json.loads(details) if details else None)


def _checked(start: Callable[[], None]) -> None:
    """Starts an operation; a payload refused at once raises the package's error."""
    try:
        start()
    except _native.NativeError as e:
        raise _error(*e.args) from None


@dataclass(frozen=True)
class Message:
    """A message as the server sent it."""

    type: str
    payload: Any = None
    from_id: Optional[str] = None
    room: Optional[str] = None
    to: Optional[str] = None
    offset: Optional[int] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def _from_json(cls, text: str) -> "Message":
        raw = json.loads(text)
        return cls(
            type=raw.get("type", ""),
            payload=raw.get("payload"),
            from_id=raw.get("from"),
            room=raw.get("room"),
            to=raw.get("to"),
            offset=raw.get("offset"),
            raw=raw,
        )


def _put_dropping_oldest(queue: asyncio.Queue, item: Any) -> None:
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)


class Subscription:
    """A registered handler; `remove()` unregisters it."""

    def __init__(self, handlers: List[Handler], handler: Handler):
        self._handlers = handlers
        self._handler = handler

    def remove(self) -> bool:
        """Unregisters the handler; False if it was already removed."""
        try:
            self._handlers.remove(self._handler)
            return True
        except ValueError:
            return False


class _Rpc:
    """netconduit's spelling: `await client.rpc.call("listall")`."""

    def __init__(self, client: "Client"):
        self._client = client

    async def call(
        self,
        method: str,
        args: Optional[Dict[str, Any]] = None,
        timeout: Optional[float] = None,
        **kwargs: Any,
    ) -> Any:
        params: Any = dict(args or {}, **kwargs) if (args or kwargs) else None
        return await self._client.call(method, params, timeout=timeout)


class Client:
    """A connection to a switchboard server. Make one with `await Client.connect(url)`."""

    def __init__(self, native: Any, request_timeout: float):
        self._native = native
        self._timeout = request_timeout
        self._loop = asyncio.get_running_loop()
        self._ids = itertools.count(1)
        self._pending: Dict[int, asyncio.Future] = {}
        # One thread waits for the native client's events (without the GIL) and hands
        # them to this loop; the client's own threads never call into Python.
        self._waiter = concurrent.futures.ThreadPoolExecutor(1, "switchboard-events")
        self._by_type: Dict[str, List[Handler]] = {}
        self._by_room: Dict[str, List[Handler]] = {}
        self._any: List[Handler] = []
        self._lifecycle: Dict[str, List[Handler]] = {
            "open": [], "close": [], "error": [], "state": [], "resume": []
        }
        self._streams: List[asyncio.Queue] = []
        self._rpc = _Rpc(self)
        # Outcomes are settled as they arrive; messages and lifecycle events wait for the
        # handlers in a bounded queue, run by a task of their own, so a stuck handler
        # holds up handlers only, never a call's answer.
        self._work: collections.deque = collections.deque()
        self._more = asyncio.Event()
        self._dropped = 0
        self._pump = self._loop.create_task(self._run())
        self._handling = self._loop.create_task(self._handle())

    @classmethod
    async def connect(
        cls,
        url: str,
        password: Optional[str] = None,
        token: Optional[str] = None,
        auto_reconnect: bool = True,
        reconnect_delay: float = 1.0,
        max_reconnect_attempts: Optional[int] = None,
        connect_timeout: float = 10.0,
        request_timeout: float = 10.0,
        msgpack: bool = False,
    ) -> "Client":
        """Connects (and authenticates with `password` or `token`); returns once the
        server said `connected`. Raises `ConnectError`. `msgpack=True` offers MessagePack
        envelopes (binary frames, smaller than JSON); nothing else changes."""
        native = _native.NativeClient(
            url,
            password,
            token,
            auto_reconnect,
            reconnect_delay,
            max_reconnect_attempts,
            connect_timeout,
            msgpack,
        )
        client = cls(native, request_timeout)
        try:
            await client._op(native.open)
        except BaseException:
            await client.close()
            raise
        return client

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # --- handlers -----------------------------------------------------------------

    def on(self, type: str, handler: Optional[Handler] = None) -> Any:
        """Calls `handler(msg)` for messages of `type`; a decorator without `handler`.
        Sync and async functions are both accepted."""
        if handler is None:
            def decorator(fn: Handler) -> Handler:
                self._by_type.setdefault(type, []).append(fn)
                return fn
            return decorator
        return self._add(self._by_type.setdefault(type, []), handler)

    def on_message(self, handler: Handler) -> Subscription:
        """Calls `handler(msg)` for every message."""
        return self._add(self._any, handler)

    def on_room_message(self, room: str, handler: Handler) -> Subscription:
        """Calls `handler(msg)` for the messages of `room`."""
        return self._add(self._by_room.setdefault(room, []), handler)

    def on_open(self, handler: Handler) -> Subscription:
        """Calls `handler(session)` on every (re)connection: a dict with `client_id`,
        `session_id`, `user_id`, `server`."""
        return self._add(self._lifecycle["open"], handler)

    def on_close(self, handler: Handler) -> Subscription:
        """Calls `handler(code, reason)` when a connection closes."""
        return self._add(self._lifecycle["close"], handler)

    def on_error(self, handler: Handler) -> Subscription:
        """Calls `handler(error)` with a `SwitchboardError` (a server's `error` about a
        message is a `RemoteError`; a failed reconnect a `ConnectError`)."""
        return self._add(self._lifecycle["error"], handler)

    def on_state(self, handler: Handler) -> Subscription:
        """Calls `handler(state)`: `connecting`, `open`, `reconnecting`, `closing`,
        `closed`."""
        return self._add(self._lifecycle["state"], handler)

    def on_resume(self, handler: Handler) -> Subscription:
        """Calls `handler(outcome)` after a reconnect: `{"resumed", "recovered"}`."""
        return self._add(self._lifecycle["resume"], handler)

    def _add(self, handlers: List[Handler], handler: Handler) -> Subscription:
        handlers.append(handler)
        return Subscription(handlers, handler)

    def messages(self, capacity: int = 1000) -> AsyncIterator[Message]:
        """Every message from now on, as an async iterator (ends when the client
        closes). Past `capacity` waiting, the oldest are dropped."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=max(1, capacity))
        self._streams.append(queue)

        async def iterate() -> AsyncIterator[Message]:
            try:
                while True:
                    item = await queue.get()
                    if item is None:
                        return
                    yield item
            finally:
                if queue in self._streams:
                    self._streams.remove(queue)

        return iterate()

    # --- actions ------------------------------------------------------------------

    async def _op(self, start: Callable[..., None], *args: Any) -> Any:
        """Starts a native operation and waits for its outcome (an event)."""
        if self._pump.done():
            raise NotConnectedError("the client is closed")
        op = next(self._ids)
        future = self._loop.create_future()
        self._pending[op] = future
        try:
            _checked(lambda: start(op, *args))
            return await future
        finally:
            self._pending.pop(op, None)

    async def join(self, room: str) -> None:
        """Joins `room`; the client rejoins it after every reconnect."""
        await self._op(self._native.join, room)

    async def leave(self, room: str) -> None:
        """Leaves `room`."""
        await self._op(self._native.leave, room)

    async def send(
        self, type: str, payload: Any = None, *, room: Optional[str] = None, to: Optional[str] = None
    ) -> None:
        """Sends a message: to `room`'s members, to one client (`to="<id>"`), to
        everyone (`to="all"`), or to the server's handlers. Queued while reconnecting."""
        await self._op(self._native.send, type, json.dumps(payload), room, to)

    async def request(
        self,
        type: str,
        payload: Any = None,
        *,
        timeout: Optional[float] = None,
        room: Optional[str] = None,
        to: Optional[str] = None,
    ) -> Any:
        """Sends a message and waits for its answer (the handler's return value).
        Raises `RequestTimeout`, `RemoteError`, `ConnectionLost`."""
        t = self._timeout if timeout is None else timeout
        return await self._op(self._native.request, type, json.dumps(payload), t, room, to)

    async def call(self, method: str, params: Any = None, timeout: Optional[float] = None) -> Any:
        """Calls an RPC method: `params` a dict of named arguments or a list of
        positional ones. Raises `RemoteError` (`INVALID_PARAMS` with
        `details["errors"]`, `UNKNOWN_METHOD`, ...), `RequestTimeout`."""
        t = self._timeout if timeout is None else timeout
        return await self._op(self._native.call, method, json.dumps(params), t)

    @property
    def rpc(self) -> _Rpc:
        """netconduit's spelling: `await client.rpc.call("sum", args={"numbers": [1]})`."""
        return self._rpc

    async def close(self) -> None:
        """Closes the connection for good and waits until every handler has run."""
        if not self._pump.done():
            await self._op(self._native.close)
        for task in (self._pump, self._handling):
            try:
                await asyncio.wait_for(asyncio.shield(task), 5)
            except asyncio.TimeoutError:
                task.cancel()
        self._waiter.shutdown(wait=False)

    # --- state --------------------------------------------------------------------

    @property
    def id(self) -> str:
        """This client's id (kept when a reconnect resumes the session)."""
        return self._native.client_id()

    @property
    def msgpack(self) -> bool:
        """True if envelopes travel in MessagePack on the current connection."""
        return self._native.msgpack()

    @property
    def rooms(self) -> List[str]:
        """The rooms joined, sorted."""
        return self._native.rooms()

    def is_in_room(self, room: str) -> bool:
        return self._native.is_in_room(room)

    @property
    def state(self) -> str:
        """`connecting`, `open`, `reconnecting`, `closing` or `closed`."""
        return self._native.state()

    @property
    def is_connected(self) -> bool:
        return self.state == "open"

    @property
    def dropped(self) -> int:
        """Messages dropped because the loop did not take them in time."""
        return self._native.dropped() + self._dropped

    # --- the pump -----------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                events = await self._loop.run_in_executor(self._waiter, self._native.wait, 0.25)
                if events is None:
                    return
                for event in events:
                    self._take(event)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(NotConnectedError("the client is closed"))
            self._more.set()

    def _take(self, event: tuple) -> None:
        kind = event[0]
        if kind in ("done", "failed"):
            future = self._pending.get(event[1])
            if future is not None and not future.done():
                if kind == "done":
                    future.set_result(json.loads(event[2]))
                else:
                    future.set_exception(_error(*event[2:]))
            return
        if kind == "message":
            msg = Message._from_json(event[1])
            for queue in list(self._streams):
                _put_dropping_oldest(queue, msg)
            event = ("message", msg)
        if len(self._work) >= _QUEUE_MAX:
            self._work.popleft()
            self._dropped += 1
        self._work.append(event)
        self._more.set()

    async def _handle(self) -> None:
        try:
            while True:
                while self._work:
                    await self._dispatch(self._work.popleft())
                if self._pump.done():
                    return
                self._more.clear()
                await self._more.wait()
        finally:
            for queue in list(self._streams):
                _put_dropping_oldest(queue, None)  # the end

    async def _dispatch(self, event: tuple) -> None:
        kind = event[0]
        if kind == "message":
            msg = event[1]
            handlers = list(self._by_type.get(msg.type, ()))
            if msg.room is not None:
                handlers += self._by_room.get(msg.room, ())
            handlers += self._any
            for handler in handlers:
                await self._call(handler, msg)
        elif kind == "open":
            for handler in list(self._lifecycle["open"]):
                await self._call(handler, json.loads(event[1]))
        elif kind == "close":
            for handler in list(self._lifecycle["close"]):
                await self._call(handler, event[1], event[2])
        elif kind == "state":
            for handler in list(self._lifecycle["state"]):
                await self._call(handler, event[1])
        elif kind == "resume":
            for handler in list(self._lifecycle["resume"]):
                await self._call(handler, json.loads(event[1]))
        elif kind == "error":
            error = _error(*event[1:])
            for handler in list(self._lifecycle["error"]):
                await self._call(handler, error)

    async def _call(self, handler: Handler, *args: Any) -> None:
        try:
            result = handler(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:  # a handler's failure is its own; the others still run
            log.exception("a switchboard handler failed")
