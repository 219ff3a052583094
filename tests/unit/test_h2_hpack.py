"""
Tests for L{edd_gateway.h2.hpack_out}: whatever heads it encodes, the
C{hpack} library's decoder (a client's) reads back exactly, block after
block on one connection.
"""

from __future__ import annotations

from hpack import Decoder
from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.h2.hpack_out import StaticTableEncoder

_names = st.one_of(st.sampled_from([b":status", b"content-type", b"content-length", b"server", b"set-cookie",
                                    b"x-request-id", b"location"]),
                   st.binary(min_size=1, max_size=300).map(lambda b: b.lower().replace(b":", b"x")))
_heads = st.lists(st.lists(st.tuples(_names, st.binary(max_size=5000)), max_size=20), min_size=1, max_size=5)


class EncoderTests(SynchronousTestCase):
    @given(_heads)
    def test_a_client_decodes_every_block(self, heads: list[list[tuple[bytes, bytes]]]) -> None:
        encoder, decoder = StaticTableEncoder(), Decoder()
        decoder.max_header_list_size = 1 << 30
        for head in heads:
            self.assertEqual(decoder.decode(encoder.encode(head), raw=True), head)
        # No entry was ever added to the client's dynamic table.
        self.assertEqual(len(decoder.header_table.dynamic_entries), 0)

    def test_static_table_fields_are_one_byte(self) -> None:
        encoder = StaticTableEncoder()
        encoder.encode([])  # the first block's table size update
        self.assertEqual(encoder.encode([(b":status", b"200"), (b":status", b"404")]), b"\x88\x8d")
