# Cython's declarations for protocol.py in the compiled build (build.py); pure Python ignores this file.
# DecisionProtocol becomes a final extension type: its attributes are C fields, read and written without
# a dictionary lookup, and its internal methods called directly (docs/benchmarks.md, "The HTTP protocol
# compiled"). Every attribute __init__ sets is declared here, public so that tests and tools read them.
cimport cython

from token_service.validator.answers cimport Remembered, Tally
from token_service.validator.decision cimport Decider


cdef dict _DECISION_HEADERS
cdef dict _HEADER_KEYS
cdef dict _DECIDED
cdef dict _REQUESTS


cpdef str _header_key(bytes name)
cpdef bint _introspection(bytes url)


@cython.final
cdef class Outbox:
    cdef public object loop
    cdef public object server_state
    cdef public list ready
    cdef public Py_ssize_t answers

    cpdef add(self, DecisionProtocol protocol)


@cython.final
cdef class DecisionProtocol:
    cdef public object validator
    cdef public Decider decider
    cdef public Tally tally
    cdef public Py_ssize_t decided_entries
    cdef public object loop
    cdef public object loop_time
    cdef public object server_state
    cdef public Outbox outbox
    cdef public double keep_alive
    cdef public double request_timeout
    cdef public Py_ssize_t max_head
    cdef public Py_ssize_t max_body
    cdef public object body
    cdef public Py_ssize_t body_size
    cdef public object parser
    cdef public object transport
    cdef public object timer
    cdef public double timer_at
    cdef public dict headers
    cdef public bytes url
    cdef public Py_ssize_t head_bytes
    cdef public object started
    cdef public double deadline
    cdef public double idle_since
    cdef public object backlog
    cdef public bint waiting
    cdef public bint writing_paused
    cdef public bint closing
    cdef public list outgoing
    cdef public bint flush_due
    cdef public bint close_after
    cdef public Py_ssize_t messages
    cdef public Remembered answered
    cdef public bint fresh
    cdef public Py_ssize_t misses
    cdef public Py_ssize_t unhashed
    cdef public Py_ssize_t unhashed_next

    cpdef _header(self, str name)
    cpdef _decided_key(self, bytes method)
    @cython.locals(entry=Remembered)
    cpdef bint _answer_again(self, tuple key, double started)
    @cython.locals(decider=Decider)
    cpdef bint _give_again(self, Remembered entry, double started)
    cpdef _by_bytes(self, bytes data)
    cpdef _feed(self, bytes data)
    cpdef _remember_decided(self, tuple key, object verified, tuple response)
    cpdef _queue(self, bytes data, bint close)
    cpdef _count(self, Py_ssize_t size)
    cpdef _write(self, object response, bint head_only, bint keep_alive)
    cpdef _send(self, bytes data, bint close)
    cpdef _flush(self)
    cpdef _close(self)
    cpdef _update_reading(self)
    cpdef _arm(self, double when)
