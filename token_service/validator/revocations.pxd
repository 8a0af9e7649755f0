# Cython's declarations for revocations.py in the compiled build (build.py); pure Python ignores this file.
# RevocationSet becomes an extension type, so that the decision (decision.pxd) reads its freshness and
# version from C fields on every request. Every attribute __init__ sets is declared here, public so that
# the loader, the feed, tests and tools read and set them; not final, so that a test may hook a subclass
# into its loads.


cdef class RevocationSet:
    cdef public dict _hashers
    cdef public object loaded_keys
    cdef public object index
    cdef public object shift
    cdef public set recent
    cdef public dict pending
    cdef public double next_due
    cdef public object version
    cdef public bint loaded
    cdef public double confirmed_at
