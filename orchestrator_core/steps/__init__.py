"""One module per Step type, behind one protocol (PLACE-5006, NERVE-4021).

* :mod:`~orchestrator_core.steps.base`: the protocol a type implements and the narrow
  context it runs in;
* :mod:`~orchestrator_core.steps.registry`: finds the type modules and maps each wire
  type to its class; the replay table;
* :mod:`~orchestrator_core.steps.admission`: the checks every type shares, and the
  replay modes;
* :mod:`~orchestrator_core.steps.runner`: the one wrapper around every type (terminal
  frame, deadline, usage, provenance), served recordings, crash recovery;
* the types: :mod:`~orchestrator_core.steps.llm` (``llm_call`` and ``llm_plan``),
  :mod:`~orchestrator_core.steps.tool_call`, :mod:`~orchestrator_core.steps.fs_op`,
  :mod:`~orchestrator_core.steps.gate_eval`, :mod:`~orchestrator_core.steps.checkpoint`.

This package imports nothing at import time, so that the registry can import it.
"""
