"""Prompt layout, stable first, so that vLLM's prefix cache serves every earlier turn.

    system prompt (+ the rolling summary, which changes only at a compaction step)
    history, oldest to newest
    the new turn

Nothing that varies per request (time, ids, the user's name) may go before the
history: one changed token early in the prompt makes every later token miss the
cache. Per-turn facts belong in the new turn's message.
"""

from __future__ import annotations

from bot.store.context import Context, Message


def build_messages(system_prompt: str, context: Context, text: str) -> list[dict[str, str]]:
    system = system_prompt
    if context.summary:
        system += "\n\nSummary of the earlier conversation:\n" + context.summary
    messages = [{"role": "system", "content": system}]
    for message in (*context.messages, Message("user", text, 0)):
        # A turn whose answer failed leaves two user messages in a row; most chat
        # templates demand alternating roles, so consecutive ones are joined.
        if messages[-1]["role"] == message.role:
            messages[-1] = {"role": message.role, "content": messages[-1]["content"] + "\n\n" + message.content}
        else:
            messages.append({"role": message.role, "content": message.content})
    return messages
