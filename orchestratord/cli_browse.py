"""The browsing commands of the CLI, for people (REC-7070..7077).

``orchestratord runs list|show|tail``, ``flows list|show`` and ``pools``: each talks to a
server over HTTP through :class:`~orchestratord.client.OrchestratorClient` (never to a
database), prints tables with ``rich``, and with ``--json`` prints the API's JSON
instead. ``--url`` and ``--token`` default to ``$ORCHESTRATORD_URL`` (else
``http://127.0.0.1:8787``) and ``$ORCHESTRATORD_TOKEN``. A refusal prints its code and
message on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from contracts.errors import ErrorEnvelope, OrchestratorError
from contracts.events import EndData, TokenData
from contracts.runs import Run
from contracts.steps import Step
from orchestratord.client import OrchestratorClient

__all__ = ["DEFAULT_URL", "register", "step_row"]

DEFAULT_URL = "http://127.0.0.1:8787"
"""The server a command talks to when neither ``--url`` nor ``$ORCHESTRATORD_URL`` is set."""

Command = Callable[[OrchestratorClient, argparse.Namespace, Console], Awaitable[None]]


def _console() -> Console:
    return Console(soft_wrap=False, highlight=False)


def _json(value: Any) -> str:
    """The API's JSON of a Struct, a list of them, or a dict of them."""
    return msgspec.json.encode(value).decode()


def _run_command(command: Command) -> Callable[[argparse.Namespace], int]:
    """Wrap an async command: a client from ``--url``/``--token``, typed refusals
    printed as ``CODE: message`` on stderr with exit status 1."""

    def handler(args: argparse.Namespace) -> int:
        async def go() -> None:
            async with OrchestratorClient(args.url, token=args.token) as client:
                await command(client, args, _console())

        try:
            asyncio.run(go())
        except OrchestratorError as exc:
            sys.stderr.write(f"{exc.code}: {exc.message}\n")
            return 1
        return 0

    return handler


def _common() -> argparse.ArgumentParser:
    """The options every browsing command takes."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--url", default=os.environ.get("ORCHESTRATORD_URL", DEFAULT_URL),
                        help="the server (default: $ORCHESTRATORD_URL or %(default)s)")
    parent.add_argument("--token", default=os.environ.get("ORCHESTRATORD_TOKEN"),
                        help="bearer token (default: $ORCHESTRATORD_TOKEN)")
    parent.add_argument("--json", action="store_true", help="print the API's JSON")
    return parent


def step_row(step: Step) -> list[str]:
    """One Step as the cells of the ``runs show`` table (REC-7072): id, type, status,
    duration (ms), tokens (in/out), cost (USD), placement (the replica, else the pool) and a
    provenance summary (engine, seed, finish reason, or the executor)."""
    usage, prov = step.usage, step.provenance
    where = "-"
    if prov is not None and prov.pool_id:
        where = prov.replica_id or prov.pool_id
    summary = "-"
    if prov is not None:
        parts = [prov.engine or prov.executor or "", f"seed={prov.seed}"
                 if prov.seed is not None else "", prov.finish_reason or ""]
        summary = " ".join(p for p in parts if p) or "-"
    if step.replay_of_step:
        summary += f" replay_of={step.replay_of_step}"
    if step.error is not None:
        summary += f" error={step.error.code}"
    return [step.step_id, str(step.type), str(step.status), str(usage.wall_ms),
            f"{usage.tokens_in}/{usage.tokens_out}", f"{usage.cost_usd:.6f}", where, summary]


def _runs_table(runs: list[Run]) -> Table:
    table = Table("run_id", "flow_id", "mode", "status", "steps", "tokens in/out",
                  "cost_usd", "created_at")
    for r in runs:
        table.add_row(r.run_id, r.flow_id, str(r.mode), str(r.status),
                      str(sum(r.steps.values())),
                      f"{r.usage.tokens_in}/{r.usage.tokens_out}",
                      f"{r.usage.cost_usd:.6f}", r.created_at)
    return table


async def _runs_list(client: OrchestratorClient, args: argparse.Namespace,
                     out: Console) -> None:
    filters = {"mode": args.mode, "status": args.status, "label": args.label,
               "limit": args.limit, "after": args.after}
    if args.flow:
        runs, nxt = await client.list_runs(args.flow, **filters)
    else:
        runs, nxt = await client.list_all_runs(**filters)
    if args.json:
        out.out(_json(runs))
        return
    out.print(_runs_table(runs))
    if nxt is not None:
        out.print(f"more: --after {nxt}")


async def _all_steps(client: OrchestratorClient, run_id: str) -> list[Step]:
    steps, after = [], None
    while True:
        page, after = await client.list_steps(run_id, limit=1000, after=after)
        steps += page
        if after is None:
            return steps


async def _runs_show(client: OrchestratorClient, args: argparse.Namespace,
                     out: Console) -> None:
    run = await client.get_run(args.run_id)
    steps = await _all_steps(client, run.run_id)
    if args.json:
        out.out(_json({"run": run, "steps": steps}))
        return
    out.print(f"run {run.run_id}  flow {run.flow_id}  mode {run.mode}  seed {run.seed}  "
              f"status {run.status}  created {run.created_at}")
    if run.replay_of:
        out.print(f"replay of {run.replay_of}")
    out.print(f"usage: tokens {run.usage.tokens_in}/{run.usage.tokens_out}  "
              f"cost_usd {run.usage.cost_usd:.6f}  wall_ms {run.usage.wall_ms}")
    table = Table("step_id", "type", "status", "ms", "tokens in/out", "cost_usd",
                  "placement", "provenance")
    for step in steps:
        table.add_row(*step_row(step))
    out.print(table)


async def _tail_target(client: OrchestratorClient, ident: str) -> Step:
    """The Step ``runs tail`` follows: the Step itself, or a Run's newest Step."""
    if not ident.startswith("run_"):
        return await client.get_step(ident)
    steps = await _all_steps(client, (await client.get_run(ident)).run_id)
    if not steps:
        raise SystemExit(f"orchestratord: run {ident} has no steps yet")
    return steps[-1]


async def _runs_tail(client: OrchestratorClient, args: argparse.Namespace,
                     out: Console) -> None:
    step = await _tail_target(client, args.id)
    params = step.input.get("params", {}) if isinstance(step.input, dict) else {}
    total = params.get("max_tokens", 256) if step.type in ("llm_call", "llm_plan") else None
    err = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed} tokens"), console=err, transient=True,
                  disable=not err.is_terminal) as bar:
        task = bar.add_task(step.step_id, total=total)
        async for frame in client.stream(step.step_id):
            if args.json:
                out.out(_json({"id": frame.seq, "event": frame.event, "data": frame.json()}))
            elif isinstance(frame.data, TokenData):
                sys.stdout.write(frame.data.t)
                sys.stdout.flush()
            elif isinstance(frame.data, EndData | ErrorEnvelope):
                sys.stdout.write("\n")
            if isinstance(frame.data, TokenData):
                bar.advance(task)
    if not args.json:
        last = frame.data
        what = f"error {last.code}: {last.message}" if isinstance(last, ErrorEnvelope) \
            else frame.event
        err.print(f"{step.step_id}: {what}")


async def _flows_list(client: OrchestratorClient, args: argparse.Namespace,
                      out: Console) -> None:
    flows, nxt = await client.list_flows(limit=args.limit, after=args.after)
    if args.json:
        out.out(_json(flows))
        return
    table = Table("flow_id", "hash", "labels", "tools", "created_at")
    for f in flows:
        table.add_row(f.flow_id, f.hash, _json(f.labels), str(len(f.tools)), f.created_at)
    out.print(table)
    if nxt is not None:
        out.print(f"more: --after {nxt}")


async def _flows_show(client: OrchestratorClient, args: argparse.Namespace,
                      out: Console) -> None:
    flow = await client.get_flow(args.flow_id)
    if args.json:
        out.out(_json(flow))
        return
    out.print(f"flow {flow.flow_id}  hash {flow.hash}  created {flow.created_at}")
    out.print(f"labels {_json(flow.labels)}")
    out.print(f"tools {', '.join(t.name for t in flow.tools) or '-'}")
    out.print_json(_json(flow.ast_ir))


async def _pools(client: OrchestratorClient, args: argparse.Namespace,
                 out: Console) -> None:
    pools = await client.pools()
    if args.json:
        out.out(_json(pools))
        return
    table = Table("pool_id", "engine", "models", "replica", "health", "slots busy/total",
                  "queued", "restarts", "breaker")
    for p in pools:
        models = ", ".join(m.id for m in p.models)
        for r in p.replicas or []:
            table.add_row(p.pool_id, f"{p.engine.name} {p.engine.version}", models,
                          r.replica_id, str(r.health), f"{r.busy}/{r.slots}", str(r.queued),
                          str(r.restarts), r.breaker)
    out.print(table)


def _add(group: Any, name: str, command: Command, help_: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(name, help=help_, parents=[_common()])
    parser.set_defaults(handler=_run_command(command))
    return parser


def _paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=100, help="page size, 1..1000")
    parser.add_argument("--after", help="the last id of the previous page")


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add ``runs list|show|tail``, ``flows list|show`` and ``pools`` (REC-7070).

    Args:
        sub: the top-level subparsers of ``orchestratord``.
        groups: the shared groups; ``groups["runs"]`` is the subparsers of ``runs``.
    """
    runs = groups["runs"]
    p = _add(runs, "list", _runs_list, "list Runs, of every Flow or of one (--flow)")
    p.add_argument("--flow", help="only this Flow's Runs")
    p.add_argument("--mode", choices=["record", "replay", "strict_replay"])
    p.add_argument("--status", choices=["active", "cancelled"])
    p.add_argument("--label", help="key:value")
    _paging(p)
    _add(runs, "show", _runs_show, "a Run and a table of its Steps").add_argument("run_id")
    _add(runs, "tail", _runs_tail, "follow a Step's stream (or a Run's newest Step's)"
         ).add_argument("id", help="a step_id, or a run_id (its newest Step)")
    flows = sub.add_parser("flows", help="browse Flows (over HTTP)")
    flow_cmds = flows.add_subparsers(dest="flows_cmd", required=True)
    _paging(_add(flow_cmds, "list", _flows_list, "list Flows, oldest first"))
    _add(flow_cmds, "show", _flows_show, "a Flow").add_argument("flow_id")
    _add(sub, "pools", _pools, "pools, replicas, health and slots")
