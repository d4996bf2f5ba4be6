"""Engine adapters behind one small interface (base.EngineAdapter)."""
