"""The local stand-ins for the platform's infrastructure: a gateway that speaks OpenFaaS routes,
its async queue worker, the Kafka connector (event source) and the supervisor that starts them.

Nothing here is imported by a function at run time.
"""
