"""Test harness: BDD suites (pytest-bdd), unit tests, the real-engine determinism suite."""
