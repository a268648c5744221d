"""Fast tests: pure functions and tiny random models (no trained model, no CLI runs)."""
