"""Pure @triton.jit kernels and thin launch helpers, one file per op family.

Nothing here knows about modules: helpers take and return torch tensors (storage only).
"""

from tritoncnn import runtime  # noqa: F401  (sets TRITON_INTERPRET before triton loads)
