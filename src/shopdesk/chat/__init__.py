"""Live chat: visitors, conversations, messages with per-conversation sequence numbers, routing."""
