"""Control messages: what the node, the operator and timers tell actors, as opposed to the copy flow's data
(``engine/messages.py``). Frozen msgspec Structs like every message between actors; grouped by the actor that
receives them. Private timer ticks an actor sends itself live here too, so every message type is in ``engine/``.
"""

from __future__ import annotations

import msgspec

# ---- signal router --------------------------------------------------------------------------------------------


# ---- follower ---------------------------------------------------------------------------------------------------


# ---- exchange actor -------------------------------------------------------------------------------------------


# ---- persistence actor ----------------------------------------------------------------------------------------

__all__ = ["msgspec"]
