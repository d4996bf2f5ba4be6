"""Committed recordings for the replay plugin's tests (REC-7040), and the agent that made
them."""
