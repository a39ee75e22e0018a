"""``FunctionGraph``: the graph a compiled function is made of, edited in place by rewrites.

A user's graph (``Variable``/``Apply`` objects) may be shared by several ``mg.function``
calls, so the compiler never edits it. It copies the part it needs into a
``FunctionGraph`` (new ``Apply`` nodes and intermediate variables; the same leaves: inputs,
shared variables and constants) and the rewrites edit that copy.

What a FunctionGraph knows that a bare graph does not:

* ``clients[var]``: who reads ``var``, as ``(node, input_position)`` pairs, with
  ``("output", k)`` for the k-th output. A rewrite asks "does anything else read this
  product?" in O(1) instead of walking the whole graph (``fuse_mul_reduce`` used to count
  readers by hand).
* ``replace(old, new)``: every reader of ``old`` now reads ``new``. The new variable's
  nodes are *imported* (added with their clients) and nodes that nobody reads any more are
  dropped, so ``apply_nodes`` is always exactly the nodes the outputs need.

A replacement must compute the same value: it must have the same kind of type, dtype and
rank (static lengths may differ where one side does not know them).
"""
from __future__ import annotations

from minigrad.graph import Apply, Constant, toposort

OUTPUT = "output"


def _copy_node(node, memo):
    """A copy of ``node`` reading ``memo``'s copies of its inputs (no ``make_node``: the
    types are already checked, and copying is on the compile-time budget)."""
    new = Apply.__new__(Apply)
    new.op = node.op
    new.inputs = [memo.get(v, v) for v in node.inputs]
    new.outputs = []
    for i, out in enumerate(node.outputs):
        copy = out.clone()
        copy.tag = dict(out.tag)
        copy.owner, copy.index = new, i
        new.outputs.append(copy)
        memo[out] = copy
    return new


def clone_graph(outputs):
    """Copy the nodes above ``outputs``; leaves are kept. Returns ``(new_outputs, memo)``."""
    memo = {}
    for node in toposort(outputs):
        _copy_node(node, memo)
    return [memo.get(o, o) for o in outputs], memo


class FunctionGraph:
    """Inputs, outputs, the nodes between them and a clients map, edited in place.

    ``inputs``: the declared symbolic inputs (other leaves, shared variables and constants,
    are allowed anywhere). ``clone=True`` (the default) copies the graph first so that the
    caller's variables are never touched.
    """

    def __init__(self, inputs, outputs, clone=True):
        outputs = list(outputs)
        if clone:
            outputs, _ = clone_graph(outputs)
        self.inputs = list(inputs)
        self.outputs = []
        self.apply_nodes = set()
        self.variables = set()
        self.clients = {}
        #: callables ``listener(event, node)``, ``event`` in {"import", "prune"}: a rewrite
        #: walker uses them to learn which nodes are new (to visit) or gone (to skip)
        self.listeners = []
        self._order = None  # the last toposort, until the next edit (see toposort)
        for var in self.inputs:
            self._add_variable(var)
        for k, out in enumerate(outputs):
            self._import_var(out)
            self.outputs.append(out)
            self.clients[out].append((OUTPUT, k))

    # ---------------------------------------------------------------- importing nodes
    def _add_variable(self, var):
        if var not in self.variables:
            self.variables.add(var)
            self.clients.setdefault(var, [])

    def _import_var(self, var):
        """Add ``var`` and, if new, the nodes that compute it (iteratively, no recursion)."""
        if var in self.variables:
            return
        if var.owner is None:
            self._add_variable(var)
            return
        for node in toposort([var], blockers=self.variables):
            if node in self.apply_nodes:
                continue
            if any(o in self.variables for o in node.outputs):
                # another output of an already imported node: nothing new above it
                continue
            self._import_node(node)

    def _import_node(self, node):
        for k, inp in enumerate(node.inputs):
            self._add_variable(inp)
            self.clients[inp].append((node, k))
        for out in node.outputs:
            self._add_variable(out)
        self.apply_nodes.add(node)
        self._order = None
        for listener in self.listeners:
            listener("import", node)

    # ---------------------------------------------------------------- replacing
    def replace(self, old, new, reason=None):
        """Make every reader of ``old`` (nodes and outputs) read ``new`` instead."""
        self.replace_all([(old, new)], reason=reason)

    def replace_all(self, pairs, reason=None):
        """``replace`` for several pairs at once (e.g. all outputs of one node)."""
        pairs = [(old, new) for old, new in pairs if old is not new]
        if pairs:
            self._order = None  # readers change their inputs: the order may change
        for old, new in pairs:
            self._check_replacement(old, new, reason)
        for old, new in pairs:
            self._check_acyclic(new, old, reason)
        for _, new in pairs:
            self._import_var(new)
        for old, new in pairs:
            if old not in self.variables:
                continue  # an earlier pair already made it unreachable
            readers = self.clients[old]
            self.clients[old] = []
            for client, k in readers:
                if client == OUTPUT:
                    self.outputs[k] = new
                else:
                    client.inputs[k] = new
                self.clients[new].append((client, k))
        for old, _ in pairs:
            self._prune_if_unread(old)

    def _check_replacement(self, old, new, reason):
        why = f" (rewrite {reason})" if reason else ""
        ot, nt = old.type, new.type
        if type(ot) is not type(nt) or getattr(ot, "dtype", None) != getattr(nt, "dtype", None) \
                or getattr(ot, "ndim", None) != getattr(nt, "ndim", None):
            raise TypeError(f"cannot replace {old} of type {ot} by {new} of type {nt}{why}")
        for a, b in zip(getattr(ot, "shape", ()), getattr(nt, "shape", ())):
            if a is not None and b is not None and a != b:
                raise TypeError(f"cannot replace {old} of type {ot} by {new} of type {nt}{why}")

    def _check_acyclic(self, new, old, reason):
        if new.owner is None:
            return
        # the new value must not be computed from the variable it replaces
        stack, seen = [new], set()
        while stack:
            var = stack.pop()
            if var is old:
                raise ValueError(f"replacing {old} by {new} would create a cycle ({reason})")
            if var in seen or var.owner is None:
                continue
            seen.add(var)
            stack.extend(var.owner.inputs)

    def _prune_if_unread(self, var):
        """Drop the node of ``var`` (and, transitively, its inputs' nodes) once unread."""
        stack = [var]
        while stack:
            var = stack.pop()
            node = var.owner
            if node is None or node not in self.apply_nodes:
                if node is None and self.clients.get(var) == [] and var not in self.inputs:
                    self.variables.discard(var)
                    del self.clients[var]
                continue
            if any(self.clients.get(o) for o in node.outputs):
                continue
            self.apply_nodes.discard(node)
            self._order = None
            for out in node.outputs:
                self.variables.discard(out)
                self.clients.pop(out, None)
            for k, inp in enumerate(node.inputs):
                readers = self.clients.get(inp)
                if readers is not None:
                    readers.remove((node, k))
                    if not readers:
                        stack.append(inp)
            for listener in self.listeners:
                listener("prune", node)

    # ---------------------------------------------------------------- reading
    def toposort(self):
        """The nodes in an order where each comes after the nodes computing its inputs.

        Kept until the next edit (an import, a replacement, a pruned node): the rewrite
        walker and ``merge`` ask for it after every pass, most of which change nothing.
        A new list each time, so a caller may edit what it gets."""
        if self._order is None:
            self._order = toposort(self.outputs)
        return list(self._order)

    def n_clients(self, var):
        return len(self.clients.get(var, ()))

    def leaves(self):
        """Variables without owner that the graph reads (inputs, shared values, constants),
        in a fixed order: the inputs, then the others in their order of creation. Not the
        order of ``self.variables`` (a set of objects hashed by address): a rewrite that
        picks the first of several equal leaves would then generate different code in
        each process, and the on-disk caches of generated code would miss."""
        inputs = [v for v in self.inputs if v in self.variables]
        given = set(inputs)
        rest = [v for v in self.variables if v.owner is None and v not in given]
        return inputs + sorted(rest, key=lambda v: v._id)

    def constants(self):
        return [v for v in self.leaves() if isinstance(v, Constant)]

    def check_integrity(self):
        """Assert the clients map matches the nodes (used by the tests)."""
        expected = {v: [] for v in self.variables}
        needed = set(self.toposort())
        assert needed == self.apply_nodes, "apply_nodes differ from what the outputs need"
        for node in self.apply_nodes:
            for k, inp in enumerate(node.inputs):
                assert inp in self.variables, f"{inp} read by {node.op} is not imported"
                expected[inp].append((node, k))
        for k, out in enumerate(self.outputs):
            expected[out].append((OUTPUT, k))
        for var, readers in expected.items():
            got = self.clients.get(var, [])
            assert sorted(got, key=_key) == sorted(readers, key=_key), f"clients of {var} differ"

    def __repr__(self):
        return (f"FunctionGraph({len(self.inputs)} inputs, {len(self.outputs)} outputs, "
                f"{len(self.apply_nodes)} nodes)")


def _key(client):
    node, k = client
    return (id(node) if node != OUTPUT else -1, k)
