"""Hooks the core calls so an upper layer (``ember.serialize``'s tracer) can watch it; None = off.

- ``shape(t)``: return a shape tuple to report for tensor ``t`` (symbolic dims), or None;
- ``concrete(t, what)``: called before a tensor's data leaves the tensor world (``item()``,
  ``bool(t)``, ``numpy()`` ...); the tracer raises there, since the value would be baked in;
- ``inplace(t, new)``: tensor ``t`` now holds the value of ``new`` (an in-place op ran);
- ``setitem(t, items, value, index_tensors)``: ``t[index] = value`` is about to write into ``t``'s
  storage without autograd (``items`` is the encoded index, see ``ops.index.encode_index``);
- ``factory(name, args, result)``: a factory was asked for a size containing symbolic dims.

The core never imports the modules that install these.
"""
shape = None
concrete = None
inplace = None
setitem = None
factory = None
