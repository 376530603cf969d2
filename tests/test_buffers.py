"""The worker's lending of large body buffers: bounded out, bounded kept."""
from sozu.http.buffers import BodyBuffers


def test_buffers_are_sixteen_pieces_and_reused():
    buffers = BodyBuffers(16384)
    first = buffers.take()
    assert len(first) == 16 * 16384
    buffers.give(first)
    assert buffers.take() is first


def test_no_more_than_max_lent_are_out_at_once():
    buffers = BodyBuffers(1024, pieces=4, max_lent_bytes=3 * 4096)
    taken = [buffers.take() for _ in range(3)]
    assert all(taken) and buffers.take() is None
    buffers.give(taken.pop())
    assert buffers.take() is not None


def test_at_most_max_idle_are_kept():
    buffers = BodyBuffers(1024, max_idle=2)
    taken = [buffers.take() for _ in range(5)]
    for buffer in taken:
        buffers.give(buffer)
    assert len(buffers.idle) == 2 and buffers.lent == 0
