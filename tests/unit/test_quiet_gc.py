"""A server process freezes its start-up objects and collects young objects less often."""
import gc

from shopdesk.main import GC_YOUNG_THRESHOLD, quiet_gc


def test_quiet_gc_freezes_and_raises_the_young_threshold():
    before = gc.get_threshold()
    try:
        quiet_gc()
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD > before[0]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
