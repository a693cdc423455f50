"""The atomic ticket behind "the last program to finish does the rest" (one launch, not two).

A kernel whose programs each produce a partial (or each read a value that must change after
all of them have read it) takes one int32 ticket per group of programs from the shared
zero buffer ``runtime.tickets(n)``. Every program of the group takes the ticket once, at the
end of its work; the program that draws ``n_programs - 1`` is the last, sees every other
program's stores and runs the finishing step, then re-arms the ticket (stores 0) so the next
launch finds the buffer zeroed again.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def last_to_finish(tickets_ptr, slot, n_programs):
    """Take a ticket for group ``slot``: True in the group's last program to get here.

    The barrier puts every thread's loads and stores before the (acq_rel, gpu-scope) atomic, so
    the last program sees all the group's stores and no program reads after the last one has
    written; that program must re-arm the ticket (store 0 at ``tickets_ptr + slot``) when done.
    """
    tl.debug_barrier()
    return tl.atomic_add(tickets_ptr + slot, 1, sem="acq_rel") == n_programs - 1
