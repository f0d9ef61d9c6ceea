"""In-process stand-ins for Parley's outside collaborators, for unit tests of the code above them.

Each speaks the public surface of the client it replaces and records what it was asked, so a
test checks behaviour, not calls into Parley's own code. The tiers below keep the real thing:
the LLM client's own tests and the engine tier run against vLLM; `tests/standin.py` stands in
one level lower (vLLM's HTTP protocol), for tests that need the real client.
"""
