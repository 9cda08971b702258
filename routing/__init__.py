"""Pluggable routing core: Router protocol, route plans and the built-in routers."""

from routing.core import (
           Attempt,
           PrefixRoute,
           PrefixRouter,
           RoutePlan,
           Router,
           RouterChain,
           RoutingContext,
)

__all__ = ["Attempt", "PrefixRoute", "PrefixRouter", "RoutePlan", "Router", "RouterChain",
           "RoutingContext"]
