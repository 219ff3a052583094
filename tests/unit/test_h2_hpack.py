"""
Tests for L{edd_gateway.h2.hpack_out}: whatever heads it encodes, the
C{hpack} library's decoder (a client's) reads back exactly, block after
block on one connection.
"""

from __future__ import annotations

from hpack import Decoder, Encoder, HPACKError, OversizedHeaderListError
from hpack.table import HeaderTable
from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.h2.hpack_in import RepeatingBlockDecoder
from edd_gateway.h2 import hpack_out
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

    def test_names_outside_the_table_past_the_kept_bound(self) -> None:
        """Literal names are worked out once and kept within a bound; every block still decodes."""
        encoder, decoder = StaticTableEncoder(), Decoder()
        head = [(b"x-name-%d" % n, b"v") for n in range(1200)]
        self.assertEqual(decoder.decode(encoder.encode(head), raw=True), head)
        self.assertLessEqual(len(hpack_out._LITERAL_NAMES), hpack_out._LITERAL_NAMES_KEPT)
        self.assertEqual(decoder.decode(encoder.encode(head[:3]), raw=True), head[:3])

    def test_repeated_fields_past_the_kept_bound(self) -> None:
        """Fields of static-table names are kept as encoded, within a bound; every block still decodes."""
        encoder, decoder = StaticTableEncoder(), Decoder()
        heads = [[(b"server", b"s%d" % n), (b"date", b"d"), (b"x-request-id", b"%d" % n)] for n in range(2500)]
        for head in heads:
            self.assertEqual(decoder.decode(encoder.encode(head), raw=True), head)
        self.assertLessEqual(len(hpack_out._REPEATED), hpack_out._REPEATED_KEPT)
        self.assertNotIn((b"x-request-id", b"7"), hpack_out._REPEATED)
        self.assertEqual(encoder.encode(heads[0]), encoder.encode(heads[0]))

    def test_every_whole_static_field_is_one_byte(self) -> None:
        """Each of the 61 static entries (a value there, or empty) is sent as its one-byte index (RFC 7541 6.1)."""
        encoder = StaticTableEncoder()
        encoder.encode([])
        for index, field in enumerate(HeaderTable.STATIC_TABLE, start=1):
            if HeaderTable.STATIC_TABLE.index(field) + 1 == index:  # the first of a repeated entry
                self.assertEqual(encoder.encode([field]), bytes((0x80 | index,)), field)

    def test_static_table_fields_are_one_byte(self) -> None:
        encoder = StaticTableEncoder()
        encoder.encode([])  # the first block's table size update
        self.assertEqual(encoder.encode([(b":status", b"200"), (b":status", b"404")]), b"\x88\x8d")


_request_fields = st.lists(st.tuples(st.sampled_from([b":method", b":path", b"user-agent", b"accept", b"cookie",
                                                      b"x-trace", b"authorization"]),
                                     st.sampled_from([b"GET", b"/", b"/a", b"curl", b"*/*", b"a=1", b""]),
                                     st.booleans()),  # sensitive: sent never indexed
                           max_size=6)


def _outcome(decoder: Decoder, block: bytes) -> object:
    """
    What C{decoder} reads from C{block} (each field with its type: a
    never-indexed one must stay so when passed on, RFC 7541 7.1.3) or the
    kind of error it raises, and its table after.
    """
    try:
        read: object = [(type(field), tuple(field)) for field in decoder.decode(block, raw=True)]
    except HPACKError as error:
        read = type(error)
    table = decoder.header_table
    return read, list(table.dynamic_entries), table._current_size, table.maxsize, table.resized


class RepeatingBlockDecoderTests(SynchronousTestCase):
    """L{RepeatingBlockDecoder} reads every block as the C{hpack} library's own decoder does."""

    @given(st.lists(st.tuples(_request_fields, st.booleans(), st.sampled_from([None, 0, 256, 4096])),
                    min_size=1, max_size=12))
    def test_same_lists_as_the_library(self, heads: list[tuple[list[tuple[bytes, bytes]], bool, int | None]]) -> None:
        """Blocks from a real encoder (indexing, Huffman), repeated or not, with table size changes between."""
        encoder, plain, repeating = Encoder(), Decoder(), RepeatingBlockDecoder(1 << 16)
        blocks: list[bytes] = []
        for fields, repeat, resize in heads:
            if resize is not None:
                encoder.header_table_size = resize
            blocks.append(encoder.encode(fields, huffman=len(blocks) % 2 == 0))
            if repeat:
                # The same block again: a client's repeated request, valid only while the table is unchanged.
                blocks.append(blocks[-1])
        for block in blocks:
            self.assertEqual(_outcome(repeating, block), _outcome(plain, block))

    @settings(max_examples=2000, deadline=None)
    @given(st.lists(st.integers(0, 255), max_size=24), st.lists(st.tuples(st.sampled_from(
        [b"x-a", b"cookie", b":path"]), st.binary(max_size=40)), max_size=4))
    def test_any_bytes_read_as_the_library_reads_them(self, block: list[int],
                                                       table: list[tuple[bytes, bytes]]) -> None:
        """Any bytes (one-byte indexes into the static and a small dynamic table, and anything else) after a block that filled the table."""
        filling = Encoder().encode(table)
        plain, repeating = Decoder(), RepeatingBlockDecoder(1 << 16)
        self.assertEqual(_outcome(repeating, filling), _outcome(plain, filling))
        self.assertEqual(_outcome(repeating, bytes(block)), _outcome(plain, bytes(block)))

    def test_the_size_bound_counts_indexed_fields(self) -> None:
        encoder = Encoder()
        filling = encoder.encode([(b"x-big", b"v" * 40)])
        decoder = RepeatingBlockDecoder(200)
        decoder.decode(filling, raw=True)
        self.assertEqual(list(decoder.decode(encoder.encode([(b"x-big", b"v" * 40)] * 2), raw=True)),
                         [(b"x-big", b"v" * 40)] * 2)
        self.assertRaises(OversizedHeaderListError, decoder.decode, encoder.encode([(b"x-big", b"v" * 40)] * 3),
                          True)

    def test_a_repeated_block_is_decoded_once(self) -> None:
        encoder, decoder = Encoder(), RepeatingBlockDecoder(1 << 16)
        fields = [(b":method", b"GET"), (b":path", b"/a")]
        decoder.decode(encoder.encode(fields), raw=True)  # adds to the table
        block = encoder.encode(fields)  # indexed now
        first = decoder.decode(block, raw=True)
        decoded: list[bytes] = []
        decoder._read_block = lambda data: decoded.append(bytes(data))  # type: ignore[method-assign,func-returns-value]
        self.assertEqual(decoder.decode(block, raw=True), first)
        self.assertEqual(decoded, [])

    def test_a_changed_table_is_decoded_again(self) -> None:
        encoder, decoder = Encoder(), RepeatingBlockDecoder(1 << 16)
        decoder.decode(encoder.encode([(b"x-a", b"1")]), raw=True)
        block = encoder.encode([(b"x-a", b"1")])  # dynamic index 62
        self.assertEqual(list(decoder.decode(block, raw=True)), [(b"x-a", b"1")])
        decoder.decode(Encoder().encode([(b"x-b", b"2")]), raw=True)  # another entry at 62 now
        self.assertEqual(list(decoder.decode(block, raw=True)), [(b"x-b", b"2")])

    def test_the_size_bound_still_holds(self) -> None:
        self.assertRaises(OversizedHeaderListError, RepeatingBlockDecoder(100).decode,
                          Encoder().encode([(b"x-big", b"v" * 200)]), True)
