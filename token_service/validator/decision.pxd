# Cython's declarations for decision.py in the compiled build (build.py); pure Python ignores this file.
# Decider becomes a final extension type, as DecisionProtocol (protocol.pxd): its attributes are C
# fields, read without a dictionary lookup, and its stages called directly rather than looked up and
# bound on every request (docs/benchmarks.md, "The cold path, 2026-12-04"). Every attribute
# __init__ sets is declared here, public so that tests and tools read and set them. Claims are typed as
# the dict they are (jwt_fast makes them): `claims.get` is then a C call, not a method looked up.
cimport cython

from token_service.validator.revocations cimport RevocationSet


cpdef bint _within(object identity, double now)


@cython.final
cdef class _Verified:
    cdef public object identity
    cdef public bytes digest
    cdef public object clean_at
    cdef public object route
    cdef public object decision


@cython.final
cdef class Decider:
    cdef public object settings
    cdef public object keys
    cdef public RevocationSet revocations
    cdef public object policy
    cdef public frozenset algorithms
    cdef public frozenset audiences
    cdef public object leeway
    cdef public object max_staleness
    cdef public frozenset token_issuers
    cdef public object prefix
    cdef public bint refuse_unprefixed
    cdef public object wall
    cdef public object monotonic
    cdef public object cache
    cdef public object cache_size
    cdef public dict shared_sets
    cdef public dict grants
    cdef public object last

    cpdef bint current(self, _Verified verified, double now, double at)
    @cython.locals(revocations=RevocationSet)
    cpdef bint _stale(self, double at)
    @cython.locals(revocations=RevocationSet)
    cpdef object _version(self, double now)

    cpdef _token(self, object token, bint refetched)
    cpdef _verify(self, object token, object digest, object now, bint refetched)
    cpdef _remember(self, object digest, object verified)
    @cython.locals(claims=dict)
    cpdef _authenticate(self, object token, object now, bint refetched)
    cpdef _handed_out(self, dict claims, object issuer)
    cpdef _key(self, object issuer, object parsed, bint refetched)
    cpdef _identity(self, dict claims, object issuer)
    cpdef _grants(self, object roles, object scopes, object issuer)
    cpdef _roles(self, dict claims)
    cpdef _ownership(self, dict claims, object issuer)
