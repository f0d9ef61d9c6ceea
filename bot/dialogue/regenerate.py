"""A question asked again in place of its answer (a Regenerate button, `Turn.regenerates`).

Asked again as a plain turn, the question would follow its own earlier exchange: the model would
see it twice, with the answer it is asked to replace, and the history would keep both answers to
one question. So when the regenerated turn is still the conversation's last exchange, this stage
gives the turn the history without that exchange (`Context.rewound`): the model sees the question
once, in the context it was first asked in, and the turn's save replaces the exchange
(`ContextStore.save`), whatever answers it (a handler, a hand-off, a failure).

When the conversation has moved on (a later turn was saved, or it was reset), the exchange is
not rewritten: the later turns were answered in its light, and pulling it out from under them
would leave them answering a question nobody sees. The question is then answered as asked again
now, after them, and saved at the end as any turn is; the log says which it was. (Not refused:
the person pressed a button under an answer and expects an answer, and in a busy channel the
conversation has often moved on by the time they look.)
"""

from __future__ import annotations

import logging

from bot.dialogue.stages import TurnState
from bot.ops.logs import turn_fields
from bot.turns import Reply

log = logging.getLogger(__name__)


class Regenerate:
    """Right after the context is loaded (`stages.Claim`): a regenerating turn's view of the history."""

    async def __call__(self, state: TurnState) -> Reply | None:
        turn = state.turn
        if not turn.regenerates:
            return None
        rewound = state.context.rewound(turn.regenerates)
        if rewound is None:
            log.info(
                "answering again a question the conversation has moved on from (turn %s): asked anew at its end",
                turn.regenerates,
                extra=turn_fields(turn),
            )
            return None
        log.info(
            "answering turn %s's question again: its %s messages are replaced",
            turn.regenerates,
            rewound.cut,
            extra=turn_fields(turn),
        )
        state.context = rewound
        return None
