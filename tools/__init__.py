"""Command-line tools (importable so the test suite can run the smokes)."""
