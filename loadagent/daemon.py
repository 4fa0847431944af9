"""The agent daemon: dials a master, registers, heartbeats, runs one job at a time.

States: CONNECTING (REGISTER resent with back-off until a WELCOME), IDLE (heartbeats),
RUNNING (a JobRun). The master is lost after ``MISSED_BEATS`` heartbeats without an
answer: any job is aborted and cleaned up within a few seconds, then the agent goes
back to CONNECTING (an embedded agent exits instead).

Signal handlers only record the signal; the serve loop acts on it. The first SIGTERM
or SIGINT (``should_exit``) stops the current job gracefully (totals still sent), says
LEAVING and waits briefly for the master's FAREWELL, so the master reads it before the
connection goes; a second one (``force_exit``) aborts.

A run ends with RUN_DONE from the master, answered with RUN_DONE_ACK: the master closes
its socket only after that, so nothing it sent before is lost on the way (a DEALER with
IMMEDIATE drops what it has not read when its peer goes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.context import ForkServerContext

import zmq
import zmq.asyncio

from loadagent.job import JobRun
from loadagent.rundir import sweep_stale_rundirs
from loadagent.status import BEAT, StatusFile
from protocol import __version__
from protocol.exitcodes import AgentExitCode
from protocol.security import Curve, fingerprint
from protocol.wire.channel import Channel, agent_control, stats_endpoint
from protocol.wire.codec import (
    PROTOCOL_VERSION,
    Message,
    Refused,
    VersionMismatch,
    WireError,
    decode,
    encode,
    read_header,
)
from protocol.wire.messages import (
    HEARTBEAT,
    MISSED_BEATS,
    Abort,
    Farewell,
    FinalAck,
    Heartbeat,
    Job,
    JobRefused,
    Leaving,
    Register,
    RunDone,
    RunDoneAck,
    Start,
    Stop,
    Welcome,
)

log = logging.getLogger("loadagent")
BACKOFF_MAX = 10.0
REGISTER_EVERY = 0.5
CLOCK_WINDOW = 30  # heartbeats
LEAVE_LINGER_MS = 500
LEAVE_WAIT = 2.0  # for the master's FAREWELL after LEAVING
SIGNAL_LATENCY = 0.2
NOT_ACCEPTED_RETRY = 5.0


def _message_type(frames: list[bytes]) -> int | None:
    try:
        return read_header(frames[0])[1] if frames else None
    except WireError:
        return None


class AgentExit(Exception):
    """The agent must stop; ``code`` is its exit status."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


@dataclass(frozen=True)
class AgentOptions:
    master: str
    name: str
    workers: int
    max_message: int
    token: str = ""
    embedded: bool = False
    curve: Curve | None = None  # this agent's keys, pinned to its master's public key


class ClockOffset:
    """master clock - our clock, from the recent heartbeat with the shortest round trip.

    One per master (a new master may run another clock); only the last CLOCK_WINDOW
    samples count, so drift over a long session is followed.
    """

    def __init__(self) -> None:
        self.offset = 0.0
        self.rtt = 0.0
        self._samples: deque[tuple[float, float]] = deque(maxlen=CLOCK_WINDOW)

    def sample(self, sent: float, master_time: float, received: float) -> None:
        rtt = received - sent
        if rtt < 0:
            return
        self._samples.append((rtt, master_time - (sent + received) / 2))
        self.rtt, offset = min(self._samples)
        # the estimate is only good to +-rtt/2: within that, the clocks agree
        self.offset = offset if abs(offset) > self.rtt / 2 else 0.0


class AgentDaemon:
    def __init__(self, opts: AgentOptions, mp: ForkServerContext) -> None:
        self._opts = opts
        self._mp = mp
        self.should_exit = False  # first SIGTERM/SIGINT: stop gracefully, then leave
        self.force_exit = False  # second one, or the embedding master gone: abort now
        self._master_gone = False  # the embedding master's pipe closed: no one to tell
        self._wake = asyncio.Event()
        self._job: JobRun | None = None
        self._channel: Channel | None = None
        self._clock = ClockOffset()
        self._leaving = False
        self._run_over = False  # the master said its run is done: its going away is normal
        self._told_handshake = False  # a failed handshake with this master was logged
        self._registered = False  # with a master now
        self._status = StatusFile(opts.name, opts.master)
        if not self._status.usable:
            log.warning("%s is not a folder of this user's alone: `loadagent status` will "
                        "not see this agent", self._status.folder)

    # -- signals and the embedding master -----------------------------------------------
    def _on_signal(self, signum: int) -> None:
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True
        log.info("got %s: %s", signal.Signals(signum).name,
                 "aborting" if self.force_exit else "stopping gracefully")
        self._wake.set()

    def _on_stdin(self) -> None:
        # The embedding master holds our stdin: EOF means it is gone.
        try:
            data = os.read(sys.stdin.fileno(), 4096)
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(sys.stdin.fileno())
            log.info("master process gone (stdin closed)")
            self._master_gone = self.should_exit = self.force_exit = True
            self._wake.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        if self._opts.embedded:
            loop.add_reader(sys.stdin.fileno(), self._on_stdin)
        for path in sweep_stale_rundirs():
            log.info("removed %s, left by an agent that is gone", path)
        ctx = zmq.asyncio.Context()
        status = loop.create_task(self._beat_status())
        try:
            while True:
                welcome = await self._connect(ctx)
                if welcome is None:
                    return AgentExitCode.OK
                lost = await self._serve(welcome)
                if not lost or self.should_exit:
                    # done, or told to stop: no next master for a departing agent
                    return AgentExitCode.OK
                if self._opts.embedded:
                    return AgentExitCode.MASTER_LOST  # an embedded agent serves one master
        except AgentExit as e:
            log.error("%s", e)
            return e.code
        finally:
            status.cancel()
            await asyncio.gather(status, return_exceptions=True)
            self._status.remove()
            if self._job is not None:
                await self._job.close()
            self._close_socket()
            ctx.term()

    async def _beat_status(self) -> None:
        """The status file `loadagent status` reads, rewritten while the loop turns."""
        while True:
            if self.should_exit:
                state = "leaving"
            elif self._job is not None:
                state = "running"  # not which run: the file is this user's, but still
            else:
                state = "idle" if self._registered else "dialing"
            self._status.write(state)  # a few hundred bytes: no thread (one could write
            await asyncio.sleep(BEAT)  # it again after the file was removed at exit)

    # -- connection ---------------------------------------------------------------------
    def _close_socket(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _send(self, msg: Message) -> None:
        if self._channel is None:
            return
        try:
            self._channel.send(encode(msg))
        except zmq.Again:
            log.debug("master not reading: dropped %s", type(msg).__name__)

    async def _recv(self, timeout: float) -> Message | None:
        assert self._channel is not None
        if not await self._channel.readable(timeout):
            return None
        frames = self._channel.recv()
        if frames is None:
            return None
        is_job = _message_type(frames) == Job.TYPE
        try:
            if is_job:
                # a job of 200,000 bundle files takes seconds to check: off the loop, so
                # heartbeats go on meanwhile
                return await asyncio.to_thread(decode, frames, self._opts.max_message)
            return decode(frames, self._opts.max_message)
        except VersionMismatch as e:
            raise AgentExit(AgentExitCode.USAGE,
                            f"master at {self._opts.master} speaks protocol version "
                            f"{e.theirs}, this agent speaks {e.ours}: upgrade one of them "
                            f"(agent {__version__})") from None
        except Refused as e:
            raise AgentExit(AgentExitCode.USAGE,
                            f"master at {self._opts.master} refused this agent: {e}") from None
        except WireError as e:
            log.warning("dropped a bad message from the master: %s", e)
            if is_job:  # say so, or the master waits for READY
                self._send(JobRefused(error=f"agent {self._opts.name}: job refused: "
                                            f"{e}"[:2000]))
            return None

    async def _connect(self, ctx: zmq.asyncio.Context) -> Welcome | None:
        """Register with the master, retrying quietly; None when told to stop.

        One socket (``protocol.wire.channel.agent_control``): libzmq redials with
        back-off and, with IMMEDIATE, a REGISTER is only queued on a live connection, so
        a master that comes up later gets one from a socket that still exists.
        """
        self._close_socket()
        self._channel = agent_control(ctx, self._opts.master, self._opts.max_message,
                                      BACKOFF_MAX, self._opts.curve)
        self._told_handshake = False
        log.info("dialing master %s", self._opts.master)
        register = Register(
            name=self._opts.name, hostname=socket.gethostname(),
            cores=os.cpu_count() or 1, workers=self._opts.workers, version=__version__,
            pid=os.getpid(), max_message=self._opts.max_message, token=self._opts.token)
        while not self.should_exit:
            self._send(register)
            msg = await self._recv(REGISTER_EVERY)
            if not isinstance(msg, Welcome):
                self._check_handshakes()
                continue
            if msg.accepted:
                self._clock = ClockOffset()
                log.info("registered with master %s as %r (protocol %d)",
                         self._opts.master, self._opts.name, PROTOCOL_VERSION)
                return msg
            log.info("master %s keeps this agent idle: %s", self._opts.master, msg.reason)
            if self._opts.embedded:
                raise AgentExit(AgentExitCode.USAGE, f"embedded agent not accepted: {msg.reason}")
            await self._sleep_or_wake(NOT_ACCEPTED_RETRY)
        return None

    def _check_handshakes(self) -> None:
        """Say once per master why it does not answer, when the handshake is the cause."""
        assert self._channel is not None
        if not self._channel.handshake_failures() or self._told_handshake:
            return
        self._told_handshake = True
        if self._opts.curve is None:
            log.warning("the master at %s refused the handshake: a master with keys wants "
                        "this agent's --key and --master-key (or that is not a loadmaster)",
                        self._opts.master)
        else:
            log.warning("the master at %s failed the CURVE handshake: it is not the master "
                        "of --master-key (%s), has no keys, or does not authorize this "
                        "agent's key (%s)", self._opts.master,
                        fingerprint(self._opts.curve.server_public or b""),
                        fingerprint(self._opts.curve.pair.public))

    async def _sleep_or_wake(self, seconds: float) -> None:
        """Sleep, cut short by a signal."""
        self._wake.clear()
        if self.should_exit:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    # -- registered ---------------------------------------------------------------------
    async def _serve(self, welcome: Welcome) -> bool:
        """Heartbeat and run jobs until we leave (False) or lose the master (True)."""
        publish_to = stats_endpoint(self._opts.master, welcome.stats_port)
        self._run_over = False
        self._registered = True
        loop = asyncio.get_running_loop()
        # Heartbeats have a task of their own: handling a message may take seconds (a job
        # of 200,000 files decoded in a thread, a run directory removed), and the master
        # must hear from us meanwhile.
        beating = loop.create_task(self._heartbeat())
        beating.add_done_callback(self._on_heartbeat_done)
        try:
            return await self._serve_messages(publish_to)
        finally:
            self._registered = False
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)

    def _on_heartbeat_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # ours, never expected: say so and stop, rather than go silent and be "lost"
            log.error("heartbeats stopped: %r", task.exception())
            self.should_exit = self.force_exit = True
            self._wake.set()

    async def _heartbeat(self) -> None:
        while True:
            self._send(Heartbeat(sent_at=time.time(), echo=0.0))
            if self._job is not None:
                self._job.resend_unacked()
            await asyncio.sleep(HEARTBEAT)

    async def _serve_messages(self, stats_endpoint: str) -> bool:
        loop = asyncio.get_running_loop()
        last_heard = loop.time()
        handled = (False, False)
        while True:
            if (self.should_exit, self.force_exit) != handled:
                handled = (self.should_exit, self.force_exit)
                if await self._on_leave_request():
                    return False
            if self._leaving and (self._job is None or self._job.settled):
                await self._leave()
                return False
            # short polls: a signal is acted on within SIGNAL_LATENCY
            msg = await self._recv(SIGNAL_LATENCY)
            if msg is not None:
                last_heard = loop.time()
                await self._handle(msg, stats_endpoint)
                continue  # the master is judged only once its queue is read
            silent = loop.time() - last_heard
            if silent > HEARTBEAT * MISSED_BEATS:
                if self._run_over and self._job is None:
                    log.info("master %s gone after its run", self._opts.master)
                else:
                    log.error("master %s lost (no heartbeat for %.1fs)", self._opts.master,
                              silent)
                await self._drop_job(Abort("master lost"))
                self._close_socket()
                return True

    async def _on_leave_request(self) -> bool:
        """should_exit: graceful stop, then leave. force_exit: abort now. True = leave now."""
        if self.force_exit or self._job is None:
            if self._job is not None:
                await self._drop_job(Abort("the agent was told to stop at once"))
            await self._leave()
            return True
        log.info("stopping the current run gracefully, then leaving")
        self._leaving = True
        self._job.forward(Stop("the agent is shutting down"))
        return False

    async def _leave(self) -> None:
        """LEAVING, then FAREWELL awaited briefly, so the master reads it before we go."""
        if self._master_gone or self._channel is None:
            return
        self._send(Leaving(reason="agent shut down by a signal"))
        deadline = asyncio.get_running_loop().time() + LEAVE_WAIT
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            msg = await self._recv(min(left, SIGNAL_LATENCY))
            if isinstance(msg, Farewell):
                break
        self._channel.close(linger_ms=LEAVE_LINGER_MS)
        self._channel = None

    async def _drop_job(self, abort: Abort) -> None:
        if self._job is not None:
            job, self._job = self._job, None
            job.forward(abort)
            await job.close()

    async def _handle(self, msg: Message, stats_endpoint: str) -> None:
        if isinstance(msg, Heartbeat):
            self._clock.sample(msg.echo, msg.sent_at, time.time())
        elif isinstance(msg, Job):
            await self._on_job(msg, stats_endpoint)
        elif isinstance(msg, Start):
            if self._job is not None:
                t0 = msg.t0 - self._clock.offset
                log.info("run %s: load starts in %.2fs (clock offset %+.1f ms)",
                         self._job.run_id, t0 - time.time(), 1000 * self._clock.offset)
                self._job.forward(Start(t0=t0))
        elif isinstance(msg, Stop | Abort):
            if self._job is not None:
                log.info("run %s: %s from the master (%s)", self._job.run_id,
                         type(msg).__name__.upper(), msg.reason)
                self._job.forward(msg)
        elif isinstance(msg, FinalAck):
            if self._job is not None:
                self._job.ack(msg.worker)
        elif isinstance(msg, RunDone):
            self._send(RunDoneAck(run_id=msg.run_id))
            self._run_over = True  # the master will go: that is no loss
            log.info("run %s done; back to idle", msg.run_id)
            if self._job is not None and self._job.run_id == msg.run_id:
                await self._drop_job(Abort("run over"))
        elif isinstance(msg, Welcome):
            pass  # a late answer to a resent REGISTER
        else:
            log.warning("unexpected %s from the master", type(msg).__name__)

    async def _on_job(self, job: Job, stats_endpoint: str) -> None:
        if self._job is not None and self._job.refused:
            await self._drop_job(Abort("its bundle was refused"))
        if self._job is not None:
            if self._job.run_id != job.run_id:
                self._send(JobRefused(error=f"agent {self._opts.name} is busy with run "
                                            f"{self._job.run_id}"))
            return
        log.info("run %s: job received (%d worker(s), %d bundle file(s))", job.run_id,
                 len(job.worker_ids), len(job.bundle))
        self._job = JobRun(job, self._opts.name, stats_endpoint, self._mp, self._send,
                           lambda: (self._clock.offset, self._clock.rtt), self._opts.curve)
        self._job.begin()
