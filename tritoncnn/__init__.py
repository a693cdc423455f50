"""tritoncnn: CNN training where every forward and backward op is a Triton kernel.

``runtime`` is imported first: on a machine without CUDA it switches Triton to its
interpreter before triton itself is imported anywhere in the package.
"""

from tritoncnn import runtime  # noqa: F401  (must stay first)

__version__ = "0.1.0"
