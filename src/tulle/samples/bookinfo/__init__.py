"""A bookinfo-like sample application for the mesh demos (see :mod:`tulle.samples.bookinfo.app`)."""
