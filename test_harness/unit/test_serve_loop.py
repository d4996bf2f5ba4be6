"""Which event loop ``serve`` runs on.

[OBS-8069] uvloop where it is installed, the standard library's loop with ``--loop
asyncio`` or without uvloop; ``--loop uvloop`` without it is refused.
"""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from orchestratord.cli import loop_factory


class TestLoopFactory:
    """``loop_factory`` maps ``--loop`` to what :class:`asyncio.Runner` is given."""

    def test_auto_and_uvloop_run_on_uvloop_where_it_is_installed(self) -> None:
        """Both give uvloop's factory, whose loop is a ``uvloop.Loop``."""
        factories = [loop_factory("auto"), loop_factory("uvloop")]
        with asyncio.Runner(loop_factory=factories[0]) as runner:
            kind = runner.run(_loop_type())
        assert (factories, kind) == ([uvloop.new_event_loop] * 2, uvloop.Loop)

    def test_asyncio_runs_on_the_standard_library_loop(self) -> None:
        """``--loop asyncio`` gives no factory: the default loop."""
        with asyncio.Runner(loop_factory=loop_factory("asyncio")) as runner:
            kind = runner.run(_loop_type())
        assert (loop_factory("asyncio"), issubclass(kind, uvloop.Loop)) == (None, False)

    def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With uvloop not importable, ``auto`` is the standard loop and ``uvloop`` exits
        naming the option."""
        monkeypatch.setitem(sys.modules, "uvloop", None)
        assert loop_factory("auto") is None
        with pytest.raises(SystemExit) as exc:
            loop_factory("uvloop")
        assert str(exc.value) == "orchestratord: --loop uvloop: uvloop is not installed"


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())
