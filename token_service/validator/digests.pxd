# Cython's declarations for digests.py in the compiled build (build.py); pure Python ignores this file.
# OpenSSL's EVP digest functions (libcrypto, the library hashlib itself uses; build.LIBRARIES links it).
# SHA-256 is fetched and one digest context made once, at import; each digest then only resets that
# context, hashes and finishes. Calls never overlap: each runs holding the GIL, from start to end.
cdef extern from "openssl/evp.h":
    ctypedef struct EVP_MD:
        pass
    ctypedef struct EVP_MD_CTX:
        pass
    EVP_MD *EVP_MD_fetch(void *libctx, const char *algorithm, const char *properties)
    EVP_MD_CTX *EVP_MD_CTX_new()
    int EVP_DigestInit_ex2(EVP_MD_CTX *ctx, const EVP_MD *type, const void *params)
    int EVP_DigestUpdate(EVP_MD_CTX *ctx, const void *data, size_t length)
    int EVP_DigestFinal_ex(EVP_MD_CTX *ctx, unsigned char *md, unsigned int *size)


cdef EVP_MD_CTX *_context


cpdef bytes sha256_digest(bytes data)


cdef inline _open():
    global _context
    _context = EVP_MD_CTX_new()
    if _context is NULL or not EVP_DigestInit_ex2(_context, EVP_MD_fetch(NULL, b"SHA256", NULL), NULL):
        raise ImportError("OpenSSL's SHA-256 is not available")


cdef inline bytes _openssl_sha256(bytes data):
    cdef unsigned char digest[32]
    cdef unsigned int size = 0
    if not (
        EVP_DigestInit_ex2(_context, NULL, NULL)
        and EVP_DigestUpdate(_context, <const char *>data, len(data))
        and EVP_DigestFinal_ex(_context, digest, &size)
    ) or size != 32:
        raise RuntimeError("SHA-256 failed")
    return digest[:32]
