"""Helpers shared by the test tiers (unit/, integration/, ui/): made-on-the-spot models, adapters,
runs and apps, and waiting on the engine. Fixtures are in tests/conftest.py."""
