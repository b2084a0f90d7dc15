"""What the keyframes node sends again to a restarted reconstruction node (issue 15, at-least-once delivery): the
keyframes and the newest request of the current window and of the previous one, so every keyframe whose window result
may have died with the node is reconstructed again. Torch-free (the keyframes node imports it)."""

from __future__ import annotations

from typing import Any

from spark3r_stream.transport.messages import Keyframe, WindowRequest


class KeyframeReplay:
    """Remembers the messages a restarted reconstruction node needs; memory is bounded by two windows.

    Feed every message the keyframes step sends with `observe`; `messages()` is the replay, in an order the
    reconstruction step can run: the previous window's keyframes and its newest request (that run forgets the rest of
    its store), then the current window's keyframes and its newest request, then the keyframes not in a run yet.
    """

    def __init__(self) -> None:
        self.keyframes: dict[int, Keyframe] = {}
        self.requests: list[WindowRequest] = []  # newest request of the previous and of the current window
        self.num_replays = 0

    def observe(self, messages: Any) -> Any:
        """Pass-through for a step's output (a message, a list of them, or None)."""
        items = messages if isinstance(messages, (list, tuple)) else [messages]
        for msg in items:
            if isinstance(msg, Keyframe):
                self.keyframes[msg.keyframe_id] = msg
            elif isinstance(msg, WindowRequest):
                self._add_request(msg)
        return messages

    def _add_request(self, request: WindowRequest) -> None:
        if not request.keyframe_ids:
            return
        # runs of one window share its first keyframe; a new first keyframe starts the next window
        if self.requests and self.requests[-1].keyframe_ids[0] == request.keyframe_ids[0]:
            self.requests[-1] = request
        else:
            self.requests = [*self.requests[-1:], request]
        oldest = min(k for r in self.requests for k in r.keyframe_ids)
        for keyframe_id in [k for k in self.keyframes if k < oldest]:
            del self.keyframes[keyframe_id]

    def messages(self) -> list[Keyframe | WindowRequest]:
        self.num_replays += 1
        out: list[Keyframe | WindowRequest] = []
        sent: set[int] = set()
        for request in self.requests:
            for keyframe_id in request.keyframe_ids:
                if keyframe_id in self.keyframes and keyframe_id not in sent:
                    out.append(self.keyframes[keyframe_id])
                    sent.add(keyframe_id)
            out.append(request)
        out.extend(self.keyframes[k] for k in sorted(self.keyframes) if k not in sent)
        return out
