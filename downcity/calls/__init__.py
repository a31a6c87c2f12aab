"""The ingress side of one call: resolution, admission, the lifecycle (run, stream, settle, fail), charge, replays."""

from downcity.calls.call import Call, begin_call
from downcity.calls.lifecycle import Answer, Streamed, chat, chat_stream, text, ui_stream, video

__all__ = ["Answer", "Call", "Streamed", "begin_call", "chat", "chat_stream", "text", "ui_stream", "video"]
