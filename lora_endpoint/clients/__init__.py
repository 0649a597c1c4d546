"""Clients of a local or deployed endpoint: the logic behind invoke.py, smoke_test.py and load_test.py."""
