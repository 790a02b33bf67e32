"""Model-agnostic meta-learning (Finn, Abbeel & Levine, 2017), functional and vectorised.

The inner loop adapts a *functional* copy of the parameters (``torch.func.functional_call``
on a dict of tensors), never a cloned module: the adapted parameters are ``theta - lr * g``
expressions of the outer parameters, so the outer backward runs through the inner steps.

* second order (default): the inner gradients keep their graph (``torch.func.grad`` nested
  inside the outer autograd, or ``torch.autograd.grad(create_graph=True)`` on the loop path),
  so the meta-gradient contains the Hessian-vector products, exactly;
* first order (FO-MAML, same paper, Sec. 5.2): the inner gradients are taken at detached
  parameters, so the meta-gradient is the query gradient at the adapted parameters;
* ``learn_inner_lr``: learned step sizes, one per parameter tensor ("layer", Antoniou et al.,
  2019, MAML++ LSLR without the per-step split) or one per element ("element", Meta-SGD,
  Li et al., 2017).

The tasks of a meta-batch are vectorised with ``torch.func.vmap`` (``vectorize=True``);
``vectorize=False`` loops over them (still functional, no cloning) for models or losses that
vmap cannot trace (e.g. an ``autograd.Function`` without a vmap rule, such as a fused kernel).

Memory: second order keeps the graph of every inner step of every task of the meta-batch,
O(tasks · inner_steps · activations); first order keeps only the query graph.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map

__all__ = ["maml_loss", "MAML", "LossFn"]

LossFn = Callable[[Any, Tensor], Tensor]
_LR_MODES = ("layer", "element")


def _check_tasks(support_x: Any, support_y: Tensor, query_x: Any, query_y: Tensor,
                 context: Tensor | None) -> int:
    """Return the number of tasks T after checking the leading task dimension of every input."""
    named = {"support_x": support_x, "support_y": support_y, "query_x": query_x,
             "query_y": query_y}
    if context is not None:
        named["context"] = context
    sizes = {}
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"maml_loss: {name} must be a Tensor with a leading task dimension, "
                            f"got {type(t).__name__}")
        if t.dim() < 1:
            raise ValueError(f"maml_loss: {name} must have a leading task dimension, got a scalar")
        sizes[name] = t.shape[0]
    if len(set(sizes.values())) != 1:
        raise ValueError(f"maml_loss: the leading (task) dimension differs between inputs: {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise ValueError("maml_loss: got 0 tasks")
    return n


def _split_params(model: nn.Module, params: dict[str, Tensor] | None
                  ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """(adapted, other, buffers): the parameters the inner loop adapts, the model's other
    parameters (read as they are; still differentiable for the outer step) and its buffers."""
    named = dict(model.named_parameters())
    if params is None:
        params = {k: v for k, v in named.items() if v.requires_grad}
    else:
        unknown = [k for k in params if k not in named]
        if unknown:
            raise KeyError(f"maml_loss: params names not in the model: {unknown[:5]}")
    if not params:
        raise ValueError("maml_loss: the model has no parameter to adapt (none requires grad)")
    other = {k: v for k, v in named.items() if k not in params}
    return params, other, dict(model.named_buffers())


def _check_vmappable(model: nn.Module, who: str) -> None:
    """vmap cannot update a buffer shared by the tasks: refuse BatchNorm in training mode
    (the in-place update of its running statistics) with a message that says what to do."""
    for name, m in model.named_modules():
        if m.training and getattr(m, "track_running_stats", False) and \
                getattr(m, "running_mean", None) is not None:
            raise ValueError(f"{who}: '{name}' ({type(m).__name__}) updates its running statistics "
                             f"in training mode, which vmap cannot do across tasks; use "
                             f"vectorize=False, track_running_stats=False, or eval mode")


def _task_fn(model: nn.Module, buffers: dict[str, Tensor], loss_fn: LossFn, inner_steps: int,
             first_order: bool, lr_float: float | None, with_context: bool
             ) -> tuple[Callable[..., Tensor], Callable[..., dict[str, Tensor]]]:
    """Build ``per_task(p, other, lrs, sx, sy, qx, qy, ctx) -> query loss`` and ``adapt``.

    ``p``: adapted parameters, ``other``: the model's other parameters, ``lrs``: a dict
    name -> tensor (learned step sizes) or empty (then ``lr_float``). Written for one task;
    vmap adds the task dimension.
    """

    def call(p: dict[str, Tensor], other: dict[str, Tensor], x: Any, ctx: Tensor | None) -> Any:
        args = (x, ctx) if with_context else (x,)
        return functional_call(model, (p, other, buffers), args, strict=False)

    def inner_loss(p: dict[str, Tensor], other: dict[str, Tensor], x: Any, y: Tensor,
                   ctx: Tensor | None) -> Tensor:
        return loss_fn(call(p, other, x, ctx), y)

    inner_grad = grad(inner_loss)

    def adapt(p: dict[str, Tensor], other: dict[str, Tensor], lrs: dict[str, Tensor], sx: Any,
              sy: Tensor, ctx: Tensor | None, steps: int = inner_steps) -> dict[str, Tensor]:
        for _ in range(steps):
            # First order: the gradient is taken at detached parameters, so it is a constant
            # for the outer differentiation (FO-MAML's definition); no inner graph is built.
            if first_order:
                g = inner_grad({k: v.detach() for k, v in p.items()},
                               {k: v.detach() for k, v in other.items()}, sx, sy, ctx)
            else:
                g = inner_grad(p, other, sx, sy, ctx)
            p = {k: v - (lrs[k] if lrs else lr_float) * g[k] for k, v in p.items()}
        return p

    def per_task(p: dict[str, Tensor], other: dict[str, Tensor], lrs: dict[str, Tensor],
                 sx: Any, sy: Tensor, qx: Any, qy: Tensor, ctx: Tensor | None) -> Tensor:
        return inner_loss(adapt(p, other, lrs, sx, sy, ctx), other, qx, qy, ctx)

    return per_task, adapt


def _loop_adapt(model: nn.Module, fixed: tuple[dict[str, Tensor], ...], loss_fn: LossFn,
                p: dict[str, Tensor], lrs: dict[str, Tensor], lr_float: float | None, sx: Any,
                sy: Tensor, ctx: Tensor | None, steps: int, first_order: bool
                ) -> dict[str, Tensor]:
    """One task's inner loop with ``torch.autograd.grad`` (works with any autograd.Function)."""
    args_ctx = (ctx,) if ctx is not None else ()
    # Second order only where an outer graph exists; otherwise (evaluation) the cheap path.
    second = (not first_order and torch.is_grad_enabled()
              and all(v.requires_grad for v in p.values()))
    with torch.enable_grad():
        for _ in range(steps):
            if second:
                at = p
            else:
                at = {k: v.detach().requires_grad_(True) for k, v in p.items()}
            if not second:  # first order: the support loss sees no outer graph at all
                fixed = tuple({k: v.detach() for k, v in d.items()} for d in fixed)
            loss = loss_fn(functional_call(model, (at, *fixed), (sx, *args_ctx), strict=False),
                           sy)
            gs = torch.autograd.grad(loss, list(at.values()), create_graph=second,
                                     allow_unused=True)
            p = {k: v if g is None else v - (lrs[k] if lrs else lr_float) * g
                 for (k, v), g in zip(p.items(), gs)}
    return p


def _check_double_backward(loss_fn: LossFn, first_order: bool) -> None:
    if not first_order and getattr(loss_fn, "supports_double_backward", True) is False:
        name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
        raise ValueError(
            f"maml_loss: loss_fn {name!r} has no double backward (its gradient is computed by a "
            "fused kernel that is not itself differentiable), so second-order MAML would silently "
            "drop the Hessian terms; pass first_order=True, or use a loss with a double backward "
            "(e.g. the plain-PyTorch reference)")


def maml_loss(model: nn.Module, support_x: Tensor, support_y: Tensor, query_x: Tensor,
              query_y: Tensor, loss_fn: LossFn, inner_lr: float | dict[str, Tensor],
              inner_steps: int = 1, first_order: bool = False, *,
              params: dict[str, Tensor] | None = None, context: Tensor | None = None,
              vectorize: bool = True, reduction: str = "mean") -> Tensor:
    """MAML query loss of a batch of tasks, differentiable w.r.t. the model's parameters.

    Each of the T tasks (leading dimension of the four tensors) adapts the parameters with
    ``inner_steps`` gradient steps of ``loss_fn(model(support_x[t]), support_y[t])`` and is
    scored by ``loss_fn(model_adapted(query_x[t]), query_y[t])``; returns the mean over
    tasks (``reduction="none"``: the T losses). Equals the loop "clone the model, take
    ``inner_steps`` SGD steps with ``create_graph=True``, evaluate the query" of
    learn2learn/higher, without cloning any module.

    ``inner_lr``: a float, or a dict name -> tensor (scalar or parameter-shaped: learned step
    sizes, differentiable). ``params``: the parameters to adapt (default: every parameter
    that requires grad; the others stay fixed). ``context``: an optional per-task tensor
    (leading dim T) passed as the model's second argument, e.g. the label embeddings of an
    episode's classes. ``vectorize=False`` loops over the tasks instead of vmapping them.
    """
    if inner_steps < 0:
        raise ValueError(f"maml_loss: inner_steps must be >= 0, got {inner_steps}")
    if reduction not in ("mean", "none", "sum"):
        raise ValueError(f"maml_loss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    _check_double_backward(loss_fn, first_order)
    n_tasks = _check_tasks(support_x, support_y, query_x, query_y, context)
    p, other, buffers = _split_params(model, params)
    if isinstance(inner_lr, dict):
        missing = [k for k in p if k not in inner_lr]
        if missing:
            raise KeyError(f"maml_loss: inner_lr dict lacks step sizes for {missing[:5]}")
        lrs, lr_float = {k: inner_lr[k] for k in p}, None
    else:
        lrs, lr_float = {}, float(inner_lr)

    if vectorize:
        _check_vmappable(model, "maml_loss")
        per_task, _ = _task_fn(model, buffers, loss_fn, inner_steps, first_order, lr_float,
                               context is not None)
        ctx_dim = 0 if context is not None else None
        losses = vmap(per_task, in_dims=(None, None, None, 0, 0, 0, 0, ctx_dim),
                      randomness="different")(p, other, lrs, support_x, support_y, query_x,
                                              query_y, context)
    else:
        out = []
        for t in range(n_tasks):
            ctx = context[t] if context is not None else None
            pa = _loop_adapt(model, (other, buffers), loss_fn, p, lrs, lr_float, support_x[t],
                             support_y[t], ctx, inner_steps, first_order)
            args = (query_x[t], ctx) if ctx is not None else (query_x[t],)
            out.append(loss_fn(functional_call(model, (pa, other, buffers), args, strict=False),
                               query_y[t]))
        losses = torch.stack(out)
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()


class MAML(nn.Module):
    """MAML / FO-MAML wrapper of ``model`` (Finn et al., 2017; Meta-SGD step sizes, Li et al., 2017).

    ``MAML(model, inner_lr, inner_steps, first_order=False, learn_inner_lr=False)``.
    ``learn_inner_lr``: False, True or "layer" (one learned step size per parameter tensor),
    "element" (one per parameter element, Meta-SGD). The learned step sizes are parameters of
    this module, so ``MAML.parameters()`` is what the outer optimiser updates.
    ``adapt_params``: names (or name prefixes) of the parameters the inner loop adapts
    (default: all that require grad); the others are meta-learned by the outer step only
    (ANIL, Raghu et al., 2020, adapts only the head).

    ``forward(support_x, support_y, query_x, query_y)`` is :func:`maml_loss` (leading task
    dimension); :meth:`task_gradients` gives the T×P matrix of per-task meta-gradients for a
    gradient aggregator; :meth:`adapt` + :meth:`predict` evaluate a batch of tasks.
    """

    def __init__(self, model: nn.Module, inner_lr: float, inner_steps: int = 1,
                 first_order: bool = False, learn_inner_lr: bool | str = False, *,
                 loss_fn: LossFn | None = None, vectorize: bool = True,
                 adapt_params: Sequence[str] | None = None) -> None:
        super().__init__()
        if not (isinstance(inner_lr, numbers.Real) and math.isfinite(inner_lr) and inner_lr > 0):
            raise ValueError(f"MAML: inner_lr must be a finite number > 0, got {inner_lr!r}")
        if not isinstance(inner_steps, numbers.Integral) or isinstance(inner_steps, bool) or inner_steps < 0:
            raise ValueError(f"MAML: inner_steps must be an int >= 0, got {inner_steps!r}")
        mode = "layer" if learn_inner_lr is True else learn_inner_lr
        if mode not in (False, *_LR_MODES):
            raise ValueError(f"MAML: learn_inner_lr must be False, True, 'layer' or 'element', "
                             f"got {learn_inner_lr!r}")
        self.model = model
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.first_order = bool(first_order)
        self.learn_inner_lr = mode
        self.loss_fn = loss_fn
        self.vectorize = vectorize
        trainable = [k for k, v in model.named_parameters() if v.requires_grad]
        if adapt_params is None:
            self._names = trainable
        else:
            if isinstance(adapt_params, str):
                adapt_params = [adapt_params]
            self._names = [k for k in trainable
                           if any(k == a or k.startswith(a + ".") for a in adapt_params)]
            unmatched = [a for a in adapt_params
                         if not any(k == a or k.startswith(a + ".") for k in trainable)]
            if unmatched:
                raise ValueError(f"MAML: adapt_params {unmatched} match no trainable parameter "
                                 f"of the model (have {trainable[:8]})")
        if not self._names:
            raise ValueError("MAML: no parameter to adapt (none requires grad)")
        self.inner_lrs = nn.ParameterDict()
        if mode:
            named = dict(model.named_parameters())
            for k in self._names:
                v = named[k]
                shape = v.shape if mode == "element" else ()
                self.inner_lrs[self._lr_key(k)] = nn.Parameter(
                    torch.full(shape, self.inner_lr, dtype=v.dtype, device=v.device))

    def extra_repr(self) -> str:
        lr = f"learned per {self.learn_inner_lr}, init {self.inner_lr}" if self.learn_inner_lr else self.inner_lr
        return (f"inner_lr={lr}, inner_steps={self.inner_steps}, first_order={self.first_order}, "
                f"vectorize={self.vectorize}, adapted tensors={len(self._names)}")

    @staticmethod
    def _lr_key(name: str) -> str:
        return name.replace(".", "__")  # ParameterDict keys cannot contain dots

    def _lr(self) -> float | dict[str, Tensor]:
        if not self.learn_inner_lr:
            return self.inner_lr
        return {k: self.inner_lrs[self._lr_key(k)] for k in self._names}

    def _loss_fn(self, loss_fn: LossFn | None) -> LossFn:
        fn = loss_fn if loss_fn is not None else self.loss_fn
        if fn is None:
            raise ValueError("MAML: no loss_fn: pass loss_fn= to MAML(...) or to the call")
        return fn

    def _params(self) -> dict[str, Tensor]:
        named = dict(self.model.named_parameters())
        return {k: named[k] for k in self._names}

    def forward(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                loss_fn: LossFn | None = None, context: Tensor | None = None,
                reduction: str = "mean") -> Tensor:
        return maml_loss(self.model, support_x, support_y, query_x, query_y,
                         self._loss_fn(loss_fn), self._lr(), self.inner_steps, self.first_order,
                         params=self._params(), context=context, vectorize=self.vectorize,
                         reduction=reduction)

    def outer_parameters(self) -> list[tuple[str, Tensor]]:
        """The (name, tensor) pairs the outer step updates, in the column order of task_gradients."""
        return [(k, v) for k, v in self.named_parameters() if v.requires_grad]

    def task_gradients(self, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                       query_y: Tensor, loss_fn: LossFn | None = None,
                       context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-task query losses (T,) and meta-gradients G (T×P, flattened in the order of
        :meth:`outer_parameters`). Memory: O(T·P) for G on top of the meta-batch's graph."""
        fn = self._loss_fn(loss_fn)
        _check_double_backward(fn, self.first_order)
        _check_tasks(support_x, support_y, query_x, query_y, context)
        outer = self.outer_parameters()
        if self.vectorize:
            _check_vmappable(self.model, "MAML.task_gradients")
            p, other, buffers = _split_params(self.model, self._params())
            other_t = {k: v for k, v in other.items() if v.requires_grad}
            other_f = {k: v for k, v in other.items() if not v.requires_grad}
            buffers = {**buffers, **other_f}
            lrs = self._lr()
            lr_float = lrs if isinstance(lrs, float) else None
            lrs_d = lrs if isinstance(lrs, dict) else {}
            per_task, _ = _task_fn(self.model, buffers, fn, self.inner_steps, self.first_order,
                                   lr_float, context is not None)
            ctx_dim = 0 if context is not None else None

            def f(p_: dict[str, Tensor], o_: dict[str, Tensor], l_: dict[str, Tensor],
                  *a: Any) -> tuple[Tensor, Tensor]:
                loss = per_task(p_, o_, l_, *a)
                return loss, loss

            det = lambda d: {k: v.detach() for k, v in d.items()}  # noqa: E731
            (gp, go, gl), losses = vmap(grad(f, argnums=(0, 1, 2), has_aux=True),
                                        in_dims=(None, None, None, 0, 0, 0, 0, ctx_dim),
                                        randomness="different")(
                det(p), det(other_t), det(lrs_d), support_x, support_y, query_x, query_y,
                context)
            by_name = {f"model.{k}": v for k, v in {**gp, **go}.items()}
            by_name.update({f"inner_lrs.{self._lr_key(k)}": v for k, v in gl.items()})
            cols = [by_name[k].reshape(len(losses), -1) for k, _ in outer]
            return losses.detach(), torch.cat(cols, dim=1)
        losses = self.forward(support_x, support_y, query_x, query_y, fn, context, "none")
        rows = []
        for t in range(len(losses)):
            gs = torch.autograd.grad(losses[t], [v for _, v in outer],
                                     retain_graph=t + 1 < len(losses), allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(v) if g is None else g).reshape(-1)
                                   for g, (_, v) in zip(gs, outer)]))
        return losses.detach(), torch.stack(rows)

    def adapt(self, support_x: Tensor, support_y: Tensor, loss_fn: LossFn | None = None,
              context: Tensor | None = None, inner_steps: int | None = None
              ) -> dict[str, Tensor]:
        """Adapted parameters of each task (dict name -> tensor with a leading task dim).

        For evaluation: the result is detached (no outer graph is built).
        """
        fn = self._loss_fn(loss_fn)
        steps = self.inner_steps if inner_steps is None else int(inner_steps)
        if steps < 0:
            raise ValueError(f"MAML.adapt: inner_steps must be >= 0, got {inner_steps}")
        n = _check_tasks(support_x, support_y, support_x, support_y, context)
        det = lambda d: {k: v.detach() for k, v in d.items()}  # noqa: E731
        p, other, buffers = _split_params(self.model, self._params())
        p, other = det(p), det(other)
        lrs = self._lr()
        lrs_d = det(lrs) if isinstance(lrs, dict) else {}
        lr_float = lrs if isinstance(lrs, float) else None
        if self.vectorize:
            _check_vmappable(self.model, "MAML.adapt")
            _, adapt = _task_fn(self.model, buffers, fn, steps, True, lr_float,
                                context is not None)
            ctx_dim = 0 if context is not None else None
            out = vmap(lambda sx, sy, c: adapt(p, other, lrs_d, sx, sy, c, steps),
                       in_dims=(0, 0, ctx_dim), randomness="different")(support_x, support_y,
                                                                        context)
            return det(out)
        per = [_loop_adapt(self.model, (other, buffers), fn, p, lrs_d, lr_float, support_x[t],
                           support_y[t], None if context is None else context[t], steps, True)
               for t in range(n)]
        return {k: torch.stack([q[k].detach() for q in per]) for k in p}

    def predict(self, params: dict[str, Tensor], x: Tensor, context: Tensor | None = None) -> Any:
        """Outputs of the adapted models (``params`` from :meth:`adapt`) on ``x`` (T×...): the
        model's output structure with a leading task dimension on each of its tensors."""
        named = dict(self.model.named_parameters())
        other = {k: v.detach() for k, v in named.items() if k not in params}
        buffers = dict(self.model.named_buffers())

        def call(p: dict[str, Tensor], xx: Tensor, c: Tensor | None) -> Any:
            args = (xx, c) if c is not None else (xx,)
            return functional_call(self.model, (p, other, buffers), args, strict=False)

        with torch.no_grad():
            if self.vectorize:
                _check_vmappable(self.model, "MAML.predict")
                return vmap(call, in_dims=(0, 0, 0 if context is not None else None),
                            randomness="different")(params, x, context)
            outs = [call({k: v[t] for k, v in params.items()}, x[t],
                         None if context is None else context[t]) for t in range(x.shape[0])]
            return tree_map(lambda *z: torch.stack(z), *outs)
