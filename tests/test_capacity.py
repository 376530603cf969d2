import os

from sozu.capacity import LoadBoard


def test_everyone_full_only_when_every_live_slot_is_at_its_limit():
    board = LoadBoard(3)
    assert not board.everyone_full()  # no worker at all: nobody to be full
    board.publish(0, 10, 10)
    board.publish(1, 9, 10)
    assert not board.everyone_full()
    board.publish(1, 10, 10)
    assert board.everyone_full()  # slot 2 has no worker: it does not count
    board.publish(2, 0, 10)
    assert not board.everyone_full()
    board.clear(2)
    assert board.everyone_full()


def test_a_child_writes_what_the_parent_reads():
    board = LoadBoard(2)
    board.publish(1, 0, 5)
    pid = os.fork()
    if pid == 0:
        board.publish(0, 5, 5)
        board.publish(1, 5, 5)
        os._exit(0)
    os.waitpid(pid, 0)
    assert board.everyone_full()
