"""Property-based fuzzing of the served OpenAPI document (schemathesis + hypothesis)."""
