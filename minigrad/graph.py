"""The symbolic graph: variables, applications of operations, and walking the graph.

A computation is a bipartite graph, exactly as in Theano:

* a :class:`Variable` is a value-to-be (typed, maybe named);
* an :class:`Apply` node records that an :class:`Op` was applied to some input variables
  and produced some output variables; ``var.owner`` points back to it (``None`` for
  inputs, constants and shared parameters: the graph's leaves).

Nothing is computed while the graph is built. ``mg.grad`` walks this graph backwards to
build *more graph* (the gradient), and ``mg.function`` walks it forwards to run it.

An Op is identified by its class and the values named in ``__props__``: two ``Sum(axis=0)``
instances are equal and hash alike, which is what lets the rewriter merge duplicates.
"""
from __future__ import annotations

import itertools

_ids = itertools.count()


class Variable:
    """A typed node of the graph. ``owner`` is the Apply that computes it, if any."""

    def __init__(self, type, owner=None, index=None, name=None):
        self.type = type
        self.owner = owner
        self.index = index
        self.name = name
        self.tag = {}
        self._id = next(_ids)

    # Static information forwarded from the type.
    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def ndim(self) -> int:
        return self.type.ndim

    def clone(self):
        """A new leaf variable of the same type and name (no owner)."""
        return type(self)(self.type, name=self.name)

    def __repr__(self):
        return self.name if self.name else f"<{type(self).__name__} {self.type} #{self._id}>"

    def __str__(self):
        if self.name:
            return self.name
        if self.owner is not None:
            return f"{self.owner.op}.{self.index}" if len(self.owner.outputs) > 1 else str(
                self.owner.op
            ) + "_out"
        return f"<{self.type}>"


class Constant(Variable):
    """A leaf whose value is known when the graph is built."""

    def __init__(self, type, data, name=None):
        super().__init__(type, name=name)
        self.data = data

    def clone(self):
        return type(self)(self.type, self.data, name=self.name)

    def signature(self):
        """Hashable identity used to merge equal constants."""
        data = self.data
        try:
            return (self.type, data.tobytes(), data.shape)
        except AttributeError:
            return (self.type, id(data))


class Apply:
    """One application of an Op to input variables, producing output variables."""

    def __init__(self, op, inputs, output_types):
        self.op = op
        self.inputs = list(inputs)
        self.outputs = [t.make_variable() for t in output_types]
        for i, out in enumerate(self.outputs):
            out.owner = self
            out.index = i

    @property
    def out(self):
        """The single output (for one-output ops)."""
        (out,) = self.outputs
        return out

    def __repr__(self):
        return f"Apply({self.op}, inputs={self.inputs})"


class Op:
    """An operation: builds nodes (``make_node``), computes (``perform``), differentiates.

    Subclasses list the parameters that distinguish instances in ``__props__``; equality,
    hashing and printing follow from them. The contract, as in PyTensor:

    * ``make_node(*inputs) -> Apply``: check input types and build output types;
    * ``perform(node, inputs) -> tuple``: the NumPy reference computation;
    * ``grad(inputs, outputs, output_grads) -> list``: one symbolic gradient per input
      (``None`` where there is none, e.g. integer indices). ``output_grads`` entries may be
      ``None`` for outputs the cost does not depend on;
    * ``destroy_map``: ``{output_index: input_index}`` for ops that overwrite an input in
      place (optimizer row updates). The compiler runs them last, after every reader.
    """

    __props__: tuple = ()
    destroy_map: dict = {}
    #: an op whose ``grad`` handles row-sparse output gradients without densifying them
    row_sparse_grad_ok = False

    def _props(self):
        return tuple(getattr(self, p) for p in self.__props__)

    def __eq__(self, other):
        return type(self) is type(other) and self._props() == other._props()

    def __hash__(self):
        return hash((type(self), self._props()))

    def __str__(self):
        name = type(self).__name__
        if not self.__props__:
            return name
        return f"{name}{{{', '.join(f'{p}={getattr(self, p)!r}' for p in self.__props__)}}}"

    __repr__ = __str__

    def __call__(self, *inputs):
        node = self.make_node(*inputs)
        return node.outputs[0] if len(node.outputs) == 1 else node.outputs

    def make_node(self, *inputs) -> Apply:
        raise NotImplementedError

    def perform(self, node, inputs) -> tuple:
        raise NotImplementedError

    def grad(self, inputs, outputs, output_grads) -> list:
        raise NotImplementedError(f"{self} has no gradient")

    def inner_graph(self, node):
        """For a fused node: ``(inputs, outputs)`` of the graph it computes in one go, over
        fresh leaf variables typed like ``node.inputs`` (``debugprint``/``to_dot`` print it
        under the node). ``None`` for an ordinary Op."""
        return None


# ---------------------------------------------------------------------------------------
# Walking the graph


def ancestors(outputs, blockers=()):
    """All variables reachable backwards from ``outputs`` (stopping at ``blockers``)."""
    seen, stack, blocked = set(), list(outputs), set(blockers)
    order = []
    while stack:
        var = stack.pop()
        if var in seen:
            continue
        seen.add(var)
        order.append(var)
        if var.owner is not None and var not in blocked:
            stack.extend(var.owner.inputs)
    return order


def inputs_of(outputs, blockers=()):
    """The leaves (variables without owner) among the ancestors of ``outputs``."""
    return [v for v in ancestors(outputs, blockers) if v.owner is None or v in set(blockers)]


def toposort(outputs, blockers=()):
    """Apply nodes needed for ``outputs``, each after the nodes computing its inputs.

    Iterative depth-first search (a graph of 10^5 nodes must not hit Python's recursion
    limit); ``blockers`` are treated as leaves even if they have an owner.
    """
    blocked = set(blockers)
    order, done, on_stack = [], set(), set()
    for root in outputs:
        if root.owner is None or root in blocked or root.owner in done:
            continue
        stack = [(root.owner, iter(root.owner.inputs))]
        on_stack.add(root.owner)
        while stack:
            node, pending = stack[-1]
            for inp in pending:
                child = inp.owner
                if child is None or inp in blocked or child in done:
                    continue
                if child in on_stack:
                    raise ValueError("the graph has a cycle")
                stack.append((child, iter(child.inputs)))
                on_stack.add(child)
                break
            else:
                stack.pop()
                on_stack.discard(node)
                done.add(node)
                order.append(node)
    return order


def clone_replace(outputs, replace=None):
    """Copy the graph of ``outputs``, substituting variables as ``replace`` says.

    ``outputs`` is a variable or a list of them (the result has the same structure);
    ``replace`` a dict or a list of ``(old, new)`` pairs. Returns the new outputs. Leaves
    are kept (shared variables stay the same objects); every Apply above a replaced
    variable is rebuilt with ``op.make_node`` so types are re-checked.
    """
    if isinstance(outputs, Variable):
        return clone_replace([outputs], replace)[0]
    outputs = list(outputs)
    for out in outputs:
        if not isinstance(out, Variable):
            raise TypeError(f"clone_replace: outputs must be variables, got {type(out).__name__}")
    pairs = replace.items() if isinstance(replace, dict) else list(replace or ())
    memo = {}
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise TypeError("clone_replace: replace must be a dict {old: new} or a list of "
                            f"(old, new) pairs, got an entry {pair!r}")
        old, new = pair
        if not isinstance(old, Variable):
            raise TypeError(f"clone_replace: a key of replace is a {type(old).__name__}, "
                            "not a variable of the graph")
        if not isinstance(new, Variable):
            from minigrad.variables import as_variable

            new = as_variable(new)  # numbers and arrays become constants
        memo[old] = new
    for node in toposort(outputs, blockers=list(memo)):
        new_inputs = [memo.get(v, v) for v in node.inputs]
        if all(a is b for a, b in zip(new_inputs, node.inputs)):
            new_node = node
        else:
            new_node = node.op.make_node(*new_inputs)
        for old, new in zip(node.outputs, new_node.outputs):
            memo.setdefault(old, new)
            if new.name is None:
                new.name = old.name
    return [memo.get(v, v) for v in outputs]
