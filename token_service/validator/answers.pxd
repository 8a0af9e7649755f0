# Cython's declarations for answers.py in the compiled build (build.py); pure Python ignores this file.
# Both classes become final extension types, so that the lean server (protocol.pxd) counts an answer
# given again in C fields, by a direct call. Every attribute __init__ sets is declared here, public
# so that tests and tools read and set them.
cimport cython


@cython.final
cdef class Remembered:
    cdef public object verified
    cdef public object token_id
    cdef public bytes data
    cdef public Py_ssize_t uses
    cdef public double last_used


@cython.final
cdef class Tally:
    cdef public list used
    cdef public list latency
    cdef public double seconds

    cpdef count(self, Remembered entry, double now, double seconds)
    cpdef fold(self, object metrics, object usage)
