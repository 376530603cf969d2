"""The session's state machine, as a table: every move it allows, and none other."""
import math

import pytest

from sozu.http import session
from sozu.http.session import (CLOSING, CONNECTING, KEEPALIVE_IDLE, READING_HEAD, ROUTING,
                               STREAMING_REQUEST, STREAMING_RESPONSE, TRANSITIONS, TUNNEL)

STATES = (READING_HEAD, ROUTING, CONNECTING, STREAMING_REQUEST, STREAMING_RESPONSE,
          KEEPALIVE_IDLE, TUNNEL, CLOSING)


def in_state(state):
    sess = session.HttpSession.__new__(session.HttpSession)
    sess.state, sess.deadline = state, 123.0
    return sess


def test_the_table_names_every_state_and_only_them():
    assert set(TRANSITIONS) == set(STATES)
    assert all(targets <= set(STATES) for targets in TRANSITIONS.values())


def test_every_state_may_close_and_closing_is_the_end():
    assert all(CLOSING in TRANSITIONS[state] for state in STATES if state != CLOSING)
    assert TRANSITIONS[CLOSING] == frozenset()


def test_a_keep_alive_connection_goes_round():
    sess = in_state(READING_HEAD)
    for state in (ROUTING, CONNECTING, STREAMING_REQUEST, STREAMING_RESPONSE, KEEPALIVE_IDLE, READING_HEAD):
        sess.enter(state)
        assert sess.state == state


@pytest.mark.parametrize("state", STATES)
def test_entering_a_state_ends_the_deadline_of_the_one_before(state):
    before = next(s for s in STATES if state in TRANSITIONS[s])
    sess = in_state(before)
    sess.enter(state)
    assert sess.deadline == math.inf


@pytest.mark.parametrize("before, after", [(READING_HEAD, CONNECTING), (KEEPALIVE_IDLE, ROUTING),
                                           (TUNNEL, KEEPALIVE_IDLE), (CLOSING, READING_HEAD),
                                           (ROUTING, STREAMING_RESPONSE)])
def test_a_move_the_table_does_not_allow_is_a_bug(before, after):
    sess = in_state(before)
    with pytest.raises(RuntimeError):
        sess.enter(after)
    assert sess.state == before and sess.deadline == 123.0
