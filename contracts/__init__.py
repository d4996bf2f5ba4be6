"""Wire contract of orchestratord: msgspec Structs, the error tree and SSE framing.

Everything a client or the server puts on the wire is defined here and nowhere else.
"""

from contracts.checkpoints import *  # noqa: F403
from contracts.checkpoints import __all__ as _checkpoints_all
from contracts.errors import *  # noqa: F403 - the public API is each module's __all__
from contracts.errors import __all__ as _errors_all
from contracts.events import *  # noqa: F403
from contracts.events import __all__ as _events_all
from contracts.facts import *  # noqa: F403
from contracts.facts import __all__ as _facts_all
from contracts.flows import *  # noqa: F403
from contracts.flows import __all__ as _flows_all
from contracts.pools import *  # noqa: F403
from contracts.pools import __all__ as _pools_all
from contracts.run_life import *  # noqa: F403
from contracts.run_life import __all__ as _run_life_all
from contracts.runs import *  # noqa: F403
from contracts.runs import __all__ as _runs_all
from contracts.steps import *  # noqa: F403
from contracts.steps import __all__ as _steps_all

__all__ = [
    *_checkpoints_all, *_errors_all, *_events_all, *_facts_all, *_flows_all, *_pools_all,
    *_run_life_all, *_runs_all, *_steps_all,
]
