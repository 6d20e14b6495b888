"""Autograd, forward-mode AD and vmap for the LRN, max-pool and fused pool->LRN ops (and their ``*_triton``
twins) and the linear op: every op, the backward ops included, is differentiable again, and works under
``torch.func``.

Why not ``torch.library.register_autograd``: the function it generates takes ``ctx`` in ``forward`` and has no
``setup_context``, so ``torch.func.grad`` / ``vjp`` / ``jacrev`` refuse it; it has no ``jvp``, and it skips
autograd altogether when no input requires grad, so ``torch.func.jvp`` got a zero tangent. Here each op gets
its own Autograd kernel that applies a setup_context-style ``autograd.Function`` (forward below autograd,
``setup_context``, ``backward``, ``jvp``, ``vmap``) whenever a derivative of any kind may be asked for.

Backward formulas call the ops (the first-order kernels), so first-order training runs as fast as before;
the backward ops' own derivatives are torch composites (``_derivatives``): max-pool's backward is linear in
grad_output (a scatter through the argmax, whose derivative is the gather by the same argmax), LRN's is
differentiated in closed form, and the fused op's is the composition of the two.

vmap folds the vmapped dimension into the batch dimension N (or makes it N for a 3-D unbatched input) and
runs the op once. The rule is registered twice: as the Function's ``vmap`` staticmethod -- the path vmap
takes, since under torch.func the op enters through its Function -- and for the op with
``torch.library.register_vmap`` (the path of max_pool2d_indices, which has no Function, and of any call that
reaches the op's batched key directly). No per-sample fallback either way.

``_core`` holds the machinery; ``lrn``, ``max_pool``, ``pool_lrn`` and ``linear`` each op's Functions and rules.
"""
from ._core import (_batched, _has_tangent, _is_tracing, _needs_function, _watched, call,  # noqa: F401
                    dual_level_open, exporting, forward_ad_active, forward_levels, plain_only, register_direct)
from .linear import register_linear  # noqa: F401
from .lrn import register_lrn  # noqa: F401
from .max_pool import register_max_pool2d  # noqa: F401
from .pool_lrn import register_max_pool2d_lrn  # noqa: F401
