"""The jobs of a run: worker ids planned over the agents, one JOB per agent, its size
checked against the agent's limit before any is sent."""

from __future__ import annotations

from collections.abc import Sequence

import msgpack

from loadmaster.bundle import Bundle
from loadmaster.config import Config
from loadmaster.coordinator import AgentRecord
from protocol.wire.codec import MessageTooLarge, encode
from protocol.wire.limits import format_size
from protocol.wire.messages import Job

__all__ = ["JobTooLarge", "check_sizes", "job_frames", "plan_workers"]


class JobTooLarge(Exception):
    """A job over an agent's ``--max-message``; the message says what to do."""

    def __init__(self, agent: AgentRecord, size: int, bundle: Bundle) -> None:
        files = sum(len(f.data) for f in bundle.files)
        super().__init__(
            f"the job is {format_size(size)} (bundle files {format_size(files)}), over agent "
            f"{agent.name}'s limit of {format_size(agent.info.max_message)}: ship fewer "
            f"files (files:, data files named in custom keys) or raise loadagent "
            f"--max-message")


def plan_workers(agents: Sequence[AgentRecord], worker: int | None) -> int:
    """Give every agent its global worker ids, in registration order; how many in all."""
    next_id = 0
    for agent in agents:
        n = worker or agent.info.workers
        agent.worker_ids = list(range(next_id, next_id + n))
        next_id += n
    return next_id


def job_frames(run_id: str, cfg: Config, bundle: Bundle, agent: AgentRecord,
               total: int) -> list[bytes]:
    """The encoded JOB of ``agent`` (JobTooLarge when over the message limit)."""
    mix = cfg.benchmark_class if isinstance(cfg.benchmark_class, dict) else {}
    wait = cfg.wait_time
    try:
        return encode(Job(
            run_id=run_id, host=cfg.host, class_file=bundle.class_file,
            class_name="" if mix else str(cfg.benchmark_class), custom_conf=cfg.custom,
            users=cfg.users, hatch_rate=cfg.hatch_rate, run_time=cfg.run_time,
            wait_time=wait.low, stop_grace=cfg.stop_grace, total_workers=total,
            worker_ids=agent.worker_ids, bundle=bundle.files,
            arrival_rate=cfg.arrival_rate or 0.0, time_unit=cfg.time_unit,
            arrivals=cfg.arrivals, pre_allocated_users=cfg.pre_allocated_users,
            max_schedule_lag=cfg.max_schedule_lag, wait_max=wait.high, pacing=wait.pacing,
            iterations=cfg.iterations or 0,
            stages=[[s.duration, float(s.target)] for s in cfg.stages],
            classes=list(mix), weights=list(mix.values())))
    except MessageTooLarge as e:
        raise JobTooLarge(agent, e.size, bundle) from None


def check_sizes(first: list[bytes], agents: Sequence[AgentRecord], bundle: Bundle) -> None:
    """Every agent's job size from the first agent's frames (the jobs differ only in
    their worker ids); JobTooLarge for the first agent whose limit it is over."""
    common = len(first[1]) - len(msgpack.packb(agents[0].worker_ids))
    for agent in agents:
        size = common + len(msgpack.packb(agent.worker_ids))
        if size > agent.info.max_message:
            raise JobTooLarge(agent, size, bundle)
