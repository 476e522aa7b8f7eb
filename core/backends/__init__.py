"""Device backends. Each device provides kernels for the ops in ``ember.ops.registry``."""
