"""Envoy's overload manager (bootstrap ``overload_manager``).

``manager`` validates the OverloadManager proto and runs the refresh loop (monitors ->
triggers -> actions); ``monitors`` are the resource monitors; ``actions`` names the
overload actions and applies their state; ``state`` is what the data plane reads on
its hot paths (a few floats the manager flips on its refresh timer).
"""
