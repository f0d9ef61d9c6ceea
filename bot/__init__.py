"""Parley: a chat-bot server for Slack, Discord and web chat that streams answers from vLLM."""
