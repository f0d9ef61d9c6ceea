"""Parley: a chat-bot server for Slack, Discord and web chat that streams answers from vLLM."""

import os

# Before numpy is first imported (OpenBLAS reads this once, at load): the embedder's and the
# router's matrix products are small, turns already run side by side, and OpenBLAS's idle
# worker threads spin. Measured with `parley loadtest`: ~300 ms of CPU a turn in those threads,
# and turns that waited seconds for a core, against ~10 ms with one thread. An operator's own
# value is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
