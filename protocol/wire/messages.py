"""Every message of the control channel, the stats channel and the agent-worker pipe.

Direction is in each docstring (M = master, A = agent, W = worker). The field order
is the wire order of this protocol version: change it only with PROTOCOL_VERSION.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.stats import Totals
from protocol.wire.codec import Message, WireError
from protocol.wire.limits import DELTA_MAX, ERROR_MESSAGE_MAX, FINAL_MAX, JOB_MAX, PIPE_MAX

__all__ = [
    "ARRIVALS",
    "HEARTBEAT",
    "MAX_ARRIVAL_RATE",
    "MAX_CLASSES",
    "MAX_NOTES",
    "MAX_SECOND",
    "MAX_STAGES",
    "MISSED_BEATS",
    "RUN_ID_LEN",
    "TOKEN_ENV",
    "Abort",
    "AgentReady",
    "BundleFile",
    "ClientsFailing",
    "Delta",
    "Farewell",
    "Final",
    "FinalAck",
    "Heartbeat",
    "Hello",
    "Job",
    "JobFailed",
    "JobRefused",
    "Leaving",
    "Register",
    "RunDone",
    "RunDoneAck",
    "Start",
    "Stop",
    "Welcome",
    "WorkerJob",
    "WorkerLost",
    "WorkerReady",
]


RUN_ID_LEN = 16  # hex characters; the stats topic is exactly this many bytes
# Liveness, both sides: a heartbeat a second; a peer silent for MISSED_BEATS is lost.
HEARTBEAT = 1.0
MISSED_BEATS = 3
# The embedded agent's one-time token travels in its environment, not its command line.
TOKEN_ENV = "LOADTEST_AGENT_TOKEN"
# The embedded agent's CURVE keys when the master has keys: "PUBLIC SECRET MASTER_PUBLIC"
# (Z85), through its environment as the token, removed at once
KEYS_ENV = "LOADTEST_AGENT_KEYS"
MAX_NOTES = 20  # notes in a READY: warnings a person reads before the load starts
MAX_SECOND = 10_000_000  # the largest second of a run a delta may cover: 115 days
ARRIVALS = ("uniform", "poisson")  # the open model's arrival processes
MAX_ARRIVAL_RATE = 1e9  # calls a second over the whole run, at most
MAX_STAGES = 1000  # a run's stages, at most
MAX_CLASSES = 100  # classes in a weighted mix, at most


def _nonneg(cls: str, **values: float) -> None:
    for name, v in values.items():
        if not v >= 0:  # NaN too
            raise WireError(f"{cls}.{name} must not be negative, got {v}")


@dataclass(frozen=True, slots=True)
class Register(Message):
    """A -> M: who the agent is and what it can run."""

    TYPE = 1
    name: str
    hostname: str
    cores: int
    workers: int
    version: str
    pid: int
    max_message: int
    token: str

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 200:
            raise WireError("Register.name must be 1-200 characters")
        if self.workers < 1 or self.workers > 4096:
            raise WireError(f"Register.workers out of range: {self.workers}")
        _nonneg("Register", cores=self.cores, pid=self.pid, max_message=self.max_message)


@dataclass(frozen=True, slots=True)
class Welcome(Message):
    """M -> A: registered (or told to stay idle), where to publish stats, the master's clock."""

    TYPE = 2
    accepted: bool
    reason: str
    stats_port: int
    master_time: float

    def __post_init__(self) -> None:
        if not 0 <= self.stats_port <= 65535:
            raise WireError(f"Welcome.stats_port out of range: {self.stats_port}")


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """A -> M every second with echo 0; M answers at once with its clock and the echo."""

    TYPE = 3
    sent_at: float
    echo: float


@dataclass(frozen=True, slots=True)
class BundleFile(Message):
    """One file of a job's bundle: a relative POSIX path, its mode bits and contents."""

    TYPE = 4
    path: str
    mode: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Job(Message):
    """M -> A: everything a run needs. Workers get it with an empty bundle."""

    TYPE = 5
    MAX_SIZE = JOB_MAX
    run_id: str
    host: str
    class_file: str
    class_name: str
    custom_conf: dict[str, Any]
    users: int
    hatch_rate: float
    run_time: float
    wait_time: float
    stop_grace: float
    total_workers: int
    worker_ids: list[int]
    bundle: list[BundleFile]
    # the open model: ``arrival_rate`` calls per ``time_unit`` seconds over the whole run
    # (0: the closed model); ``users`` is then the pool's most clients, of which
    # ``pre_allocated_users`` start at once
    arrival_rate: float = 0.0
    time_unit: float = 1.0
    arrivals: str = "uniform"
    pre_allocated_users: int = 0
    max_schedule_lag: float = 10.0
    # between a closed-model client's calls: a wait drawn from [wait_time, wait_max] (a
    # constant one when wait_max <= wait_time), or ``pacing`` seconds start to start
    wait_max: float = 0.0
    pacing: float = 0.0
    # the run ends after this many calls in all (0: at run_time only)
    iterations: int = 0
    # [duration, target] each: the closed model's clients (``users`` is the largest), or
    # the open model's arrival rate (``arrival_rate`` is the largest); empty: constant
    stages: list[list[float]] = field(default_factory=list)
    # several classes by weight (class_name is then empty)
    classes: list[str] = field(default_factory=list)
    weights: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.run_id) != RUN_ID_LEN or self.run_id.strip("0123456789abcdef"):
            raise WireError(f"Job.run_id must be {RUN_ID_LEN} lowercase hex digits")
        if len(set(self.worker_ids)) != len(self.worker_ids):
            raise WireError("Job.worker_ids lists a worker twice")
        _nonneg("Job", users=self.users, run_time=self.run_time, wait_time=self.wait_time,
                stop_grace=self.stop_grace, arrival_rate=self.arrival_rate,
                pre_allocated_users=self.pre_allocated_users)
        if not self.hatch_rate > 0:  # NaN too
            raise WireError("Job.hatch_rate must be positive")
        if not (self.time_unit > 0 and self.max_schedule_lag > 0):
            raise WireError("Job.time_unit and Job.max_schedule_lag must be positive")
        if not self.arrival_rate / self.time_unit <= MAX_ARRIVAL_RATE:
            raise WireError(f"Job.arrival_rate must be at most {MAX_ARRIVAL_RATE:g} a second")
        if self.arrivals not in ARRIVALS:
            raise WireError(f"Job.arrivals must be one of {', '.join(ARRIVALS)}")
        if self.pre_allocated_users > self.users:
            raise WireError("Job.pre_allocated_users must not exceed users")
        if self.total_workers < 1 or any(not 0 <= w < self.total_workers for w in self.worker_ids):
            raise WireError("Job.worker_ids must lie in [0, total_workers)")
        _nonneg("Job", wait_max=self.wait_max, pacing=self.pacing, iterations=self.iterations)
        if len(self.stages) > MAX_STAGES or any(
                len(st) != 2 or not (st[0] >= 0 and st[1] >= 0) for st in self.stages):
            raise WireError(f"Job.stages: at most {MAX_STAGES} of [duration >= 0, target >= 0]")
        if self.stages and max(st[1] for st in self.stages) != (
                self.arrival_rate or self.users):
            raise WireError("Job.stages: the largest target must be users (arrival_rate)")
        if len(self.classes) != len(self.weights) or len(self.classes) > MAX_CLASSES or any(
                w < 1 for w in self.weights) or (self.classes and self.class_name):
            raise WireError(f"Job.classes: at most {MAX_CLASSES}, each with a weight >= 1, "
                            f"and no class_name then")


def _check_notes(cls: str, notes: list[str]) -> None:
    if len(notes) > MAX_NOTES or any(len(n) > 2000 for n in notes):
        raise WireError(f"{cls}.notes: at most {MAX_NOTES} notes of 2000 characters")


@dataclass(frozen=True, slots=True)
class AgentReady(Message):
    """A -> M: every worker of the agent imported the client and ran global_init.

    Also the agent's estimate of (master clock - its clock), from the heartbeat with the
    shortest round trip, and that round trip; and notes for the user (a worker that
    cannot open a descriptor for each of its clients, say), printed before START.
    """

    TYPE = 6
    workers: int
    clock_offset: float
    rtt: float
    notes: list[str]

    def __post_init__(self) -> None:
        _check_notes("AgentReady", self.notes)


@dataclass(frozen=True, slots=True)
class WorkerReady(Message):
    """W -> A: this worker imported the client and ran global_init; notes for the user."""

    TYPE = 19
    worker: int
    notes: list[str]

    def __post_init__(self) -> None:
        _check_notes("WorkerReady", self.notes)


@dataclass(frozen=True, slots=True)
class JobFailed(Message):
    """W -> A -> M: the client code failed before load (import, global_init).

    ``error`` is what the user reads: a one-line reason, or the traceback of their code.
    """

    TYPE = 7
    MAX_SIZE = ERROR_MESSAGE_MAX
    worker: int
    error: str


@dataclass(frozen=True, slots=True)
class JobRefused(Message):
    """A -> M: the agent cannot run the job at all (bad bundle, busy, cannot start)."""

    TYPE = 20
    MAX_SIZE = ERROR_MESSAGE_MAX
    error: str


@dataclass(frozen=True, slots=True)
class ClientsFailing(Message):
    """W -> A -> M: every client of the worker fails the same way before any I/O.

    Sent once, early in the load: every ``init_before_use`` raised, or every call so far
    raised the same error of a kind raised before any I/O (an invalid URL, say). The
    master stops the run when every worker with clients says so.
    """

    TYPE = 21
    MAX_SIZE = ERROR_MESSAGE_MAX
    worker: int
    error: str


@dataclass(frozen=True, slots=True)
class Start(Message):
    """M -> A -> W: load begins at ``t0`` (wall clock of the receiver's side)."""

    TYPE = 8
    t0: float


@dataclass(frozen=True, slots=True)
class Stop(Message):
    """M -> A -> W: no new calls; in-flight ones get the stop grace; then FINAL."""

    TYPE = 9
    reason: str


@dataclass(frozen=True, slots=True)
class Abort(Message):
    """M -> A -> W: cancel every call now, shut down, send what you have."""

    TYPE = 10
    reason: str


@dataclass(frozen=True, slots=True)
class Final(Message):
    """W -> A -> M: a worker's cumulative totals; the final report is built from these."""

    TYPE = 11
    MAX_SIZE = FINAL_MAX
    worker: int
    totals: Totals
    # seconds from T0 to the later of the stop and the end of the last call that finished
    # by itself (a call cancelled when the grace ran out does not count)
    last_end: float
    clients: int  # clients that started (init_before_use returned)
    aborted: bool
    start_lag: float  # how late after T0 (its own clock) the worker could start load
    stopped_at: float  # seconds from T0 to the stop (run_time, STOP or ABORT); 0: never
    grace: float  # seconds the stop grace lasted: until the last call in flight ended
    grace_finished: int  # calls in flight at the stop that finished by themselves
    grace_cancelled: int  # calls in flight at the stop cancelled when the grace ran out

    def __post_init__(self) -> None:
        _nonneg("Final", clients=self.clients, stopped_at=self.stopped_at, grace=self.grace,
                grace_finished=self.grace_finished, grace_cancelled=self.grace_cancelled)


@dataclass(frozen=True, slots=True)
class FinalAck(Message):
    """M -> A: that worker's totals are in; stop resending them."""

    TYPE = 12
    worker: int


@dataclass(frozen=True, slots=True)
class WorkerLost(Message):
    """A -> M: a worker died without sending its totals."""

    TYPE = 13
    worker: int
    exitcode: int
    detail: str


@dataclass(frozen=True, slots=True)
class Leaving(Message):
    """A -> M: the agent is shutting down (its totals, if any, were sent before)."""

    TYPE = 14
    reason: str


@dataclass(frozen=True, slots=True)
class Farewell(Message):
    """M -> A: LEAVING is recorded; the agent may close its socket."""

    TYPE = 23
    reason: str


@dataclass(frozen=True, slots=True)
class RunDone(Message):
    """M -> A: the run is over; go idle and remove the run directory.

    The agent answers RUN_DONE_ACK: the master closes its socket only then (or after a
    short wait), so no message before RUN_DONE is lost when it goes away.
    """

    TYPE = 15
    run_id: str


@dataclass(frozen=True, slots=True)
class RunDoneAck(Message):
    """A -> M: RUN_DONE (and everything before it) was read."""

    TYPE = 22
    run_id: str


@dataclass(frozen=True, slots=True)
class WorkerJob(Message):
    """A -> W over the pipe: the job, which worker this is, where to publish."""

    TYPE = 16
    MAX_SIZE = PIPE_MAX
    job: Job
    worker: int
    agent: str
    stats_endpoint: str
    run_dir: str
    # the agent's CURVE keys for the stats socket: [public, secret, master's public], or
    # none (an agent without keys)
    curve: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.curve) not in (0, 3) or any(len(k) != 40 for k in self.curve):
            raise WireError("WorkerJob.curve must be empty or three 40-byte keys")


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """W -> M on the stats socket until START: proves the subscription is live."""

    TYPE = 17
    agent: str
    worker: int


@dataclass(slots=True)  # not frozen: that costs four times as much to build, thousands a second
class Delta(Message):
    """W -> M on the stats socket every second: what happened since the previous one."""

    TYPE = 18
    MAX_SIZE = DELTA_MAX
    agent: str
    worker: int
    seq: int
    second: int  # the second of the run it covers, from 1
    clients: int
    totals: Totals
    cpu_seconds: float
    loop_lag: float
    # the open model: how far behind its schedule the worker fell at worst in the second
    # (the latest start of a call after its intended one, or the oldest call still waiting
    # for a client); 0.0 in the closed model
    sched_lag: float = 0.0

    def __post_init__(self) -> None:
        _nonneg("Delta", seq=self.seq, clients=self.clients, cpu_seconds=self.cpu_seconds,
                loop_lag=self.loop_lag, sched_lag=self.sched_lag)
        if not 1 <= self.second <= MAX_SECOND:
            raise WireError(f"Delta.second must be 1 to {MAX_SECOND}, got {self.second}")
