"""Primary keys: time-ordered 32-hex-char ids, so inserts stay local and cursors sort by time."""
import os
import time


def new_id() -> str:
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"
