"""The tcp_proxy network filter (envoy.filters.network.tcp_proxy).

``config`` validates the TcpProxy proto and builds the factory once per worker;
``filter`` is the per-connection protocol pair that moves bytes both ways.
"""
