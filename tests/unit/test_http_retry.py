"""
L{edd_gateway.http.retry}: which requests a failed reuse of a pooled
connection may send again, and so which ones the pool hands a connection
to without looking at it first.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.http.retry import look_before_reuse, may_send_again, sendable_again
from edd_gateway.http.headers import BODY_LENGTH
from tests._support.http import request_info as info


@dataclass
class Used:
    requests: int
    received: int


class SendableAgainTests(SynchronousTestCase):
    def test_idempotent_methods(self) -> None:
        for method in (b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"):
            self.assertTrue(sendable_again(info(method), retried=False, whole_body=True, request_done=True), method)

    def test_post(self) -> None:
        self.assertFalse(sendable_again(info(b"POST", BODY_LENGTH), retried=False, whole_body=True,
                                        request_done=True))

    def test_post_with_an_idempotency_key(self) -> None:
        request = info(b"POST", BODY_LENGTH, [(b"Idempotency-Key", b'"8e03978e"')])
        self.assertTrue(sendable_again(request, retried=False, whole_body=True, request_done=True))

    def test_once_only(self) -> None:
        self.assertFalse(sendable_again(info(b"GET"), retried=True, whole_body=True, request_done=True))

    def test_a_body_still_arriving_or_streamed(self) -> None:
        self.assertFalse(sendable_again(info(b"PUT", BODY_LENGTH), retried=False, whole_body=True,
                                        request_done=False))
        self.assertFalse(sendable_again(info(b"PUT", BODY_LENGTH), retried=False, whole_body=False,
                                        request_done=True))


class MaySendAgainTests(SynchronousTestCase):
    def test_a_reused_connection_that_said_nothing(self) -> None:
        self.assertTrue(may_send_again(info(b"GET"), Used(requests=2, received=0), retried=False, whole_body=True,
                                       request_done=True))

    def test_a_new_connection_or_one_that_answered(self) -> None:
        for used in (Used(requests=1, received=0), Used(requests=5, received=10), None):
            self.assertFalse(may_send_again(info(b"GET"), used, retried=False, whole_body=True,
                                            request_done=True), used)


class LookBeforeReuseTests(SynchronousTestCase):
    def test_only_what_could_not_be_sent_again(self) -> None:
        self.assertFalse(look_before_reuse(info(b"GET"), retried=False, request_done=True))
        self.assertTrue(look_before_reuse(info(b"POST", BODY_LENGTH), retried=False, request_done=True))
        self.assertTrue(look_before_reuse(info(b"PUT", BODY_LENGTH), retried=False, request_done=False))
        self.assertTrue(look_before_reuse(info(b"GET"), retried=True, request_done=True))
