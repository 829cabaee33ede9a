# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Quality-guided 3D phase unwrapping kernel.

No validation here: the caller (pedq_deploy.preprocess.unwrap.quality_unwrap) passes C-contiguous
float32 phase (unwrapped in place), uint8 mask and float32 quality arrays of one shape.
"""
import numpy as np
cimport numpy as cnp
from libc.math cimport floor, M_PI
from libc.stdlib cimport malloc, free

cnp.import_array()

ctypedef struct Entry:
    float q
    Py_ssize_t idx
    Py_ssize_t parent


cdef inline void _push(Entry* heap, Py_ssize_t* size, float q, Py_ssize_t idx, Py_ssize_t parent) noexcept nogil:
    cdef Py_ssize_t i = size[0]
    cdef Py_ssize_t up
    size[0] += 1
    while i > 0:
        up = (i - 1) >> 1
        if heap[up].q >= q:
            break
        heap[i] = heap[up]
        i = up
    heap[i].q = q
    heap[i].idx = idx
    heap[i].parent = parent


cdef inline Entry _pop(Entry* heap, Py_ssize_t* size) noexcept nogil:
    cdef Entry top = heap[0]
    cdef Entry last
    cdef Py_ssize_t i = 0, child, n
    size[0] -= 1
    n = size[0]
    if n > 0:
        last = heap[n]
        while True:
            child = 2 * i + 1
            if child >= n:
                break
            if child + 1 < n and heap[child + 1].q > heap[child].q:
                child += 1
            if heap[child].q <= last.q:
                break
            heap[i] = heap[child]
            i = child
        heap[i] = last
    return top


cdef inline void _expand(Py_ssize_t idx, Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t n2, Py_ssize_t* strides,
                         unsigned char* state, unsigned char* m, float* q, Entry* heap, Py_ssize_t* size) noexcept nogil:
    """Queue the new in-mask neighbours of voxel ``idx``, each to be unwrapped against it."""
    cdef Py_ssize_t i = idx // strides[0], j = (idx // strides[1]) % n1, k = idx % n2, nb
    cdef int t
    for t in range(6):
        nb = _neighbour(idx, i, j, k, t, n0, n1, n2, strides)
        if nb >= 0 and state[nb] == 0 and m[nb] != 0:
            state[nb] = 1
            _push(heap, size, q[nb], nb, idx)


def quality_unwrap_kernel(float[:, :, ::1] phase, unsigned char[:, :, ::1] mask, float[:, :, ::1] quality, cnp.intp_t[::1] seeds):
    """Unwrap ``phase`` in place inside ``mask``, most reliable voxels first.

    ``seeds``: flat indices of the mask voxels by decreasing quality; each component of the mask
    starts from its best voxel.
    """
    cdef Py_ssize_t n0 = phase.shape[0], n1 = phase.shape[1], n2 = phase.shape[2]
    cdef Py_ssize_t n = n0 * n1 * n2
    cdef float* p = &phase[0, 0, 0]
    cdef unsigned char* m = &mask[0, 0, 0]
    cdef float* q = &quality[0, 0, 0]
    cdef unsigned char* state = <unsigned char*> malloc(n)  # 0 new, 1 queued, 2 done
    cdef Entry* heap = <Entry*> malloc(n * sizeof(Entry))
    cdef Py_ssize_t size = 0, s, idx
    cdef Py_ssize_t strides[3]
    cdef Entry e
    cdef double d, twopi = 2.0 * M_PI
    if state == NULL or heap == NULL:
        free(state); free(heap)
        raise MemoryError()
    strides[0] = n1 * n2
    strides[1] = n2
    strides[2] = 1
    with nogil:
        for idx in range(n):
            state[idx] = 0
        for s in range(seeds.shape[0]):
            idx = seeds[s]
            if state[idx] != 0 or m[idx] == 0:
                continue
            state[idx] = 2  # a seed keeps its phase; its component is unwrapped relative to it
            _expand(idx, n0, n1, n2, strides, state, m, q, heap, &size)
            while size > 0:
                e = _pop(heap, &size)
                idx = e.idx
                d = p[idx] - p[e.parent]
                p[idx] = <float>(p[idx] - twopi * floor(d / twopi + 0.5))
                state[idx] = 2
                _expand(idx, n0, n1, n2, strides, state, m, q, heap, &size)
    free(state)
    free(heap)


cdef inline Py_ssize_t _neighbour(Py_ssize_t idx, Py_ssize_t i, Py_ssize_t j, Py_ssize_t k, int t,
                                  Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t n2, Py_ssize_t* strides) noexcept nogil:
    if t == 0:
        return idx - strides[0] if i > 0 else -1
    if t == 1:
        return idx + strides[0] if i < n0 - 1 else -1
    if t == 2:
        return idx - strides[1] if j > 0 else -1
    if t == 3:
        return idx + strides[1] if j < n1 - 1 else -1
    if t == 4:
        return idx - 1 if k > 0 else -1
    return idx + 1 if k < n2 - 1 else -1
