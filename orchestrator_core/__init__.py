"""Domain core of orchestratord: flows, runs, steps, event log, replay, pools. No HTTP."""
