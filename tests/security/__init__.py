"""Adversarial inputs kept as tests: what an attacker sends, and the bound Parley must hold against it."""
