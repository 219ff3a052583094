"""
The PostgreSQL change feed, end to end and timed: the tests and their probes
are L{tests._support.live_feed}'s (where its docstring says what they time
and why), shared with C{test_live_events.py}, which runs them with the events
announcing the changes.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from edd_gateway.testing import EndToEndMixin
from tests._support.live_feed import LiveFeedMixin


class LiveFeedTests(LiveFeedMixin, EndToEndMixin, TestCase):
    pass
