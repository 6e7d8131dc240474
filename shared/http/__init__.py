"""The HTTP layer every function uses: declarative routes, one error envelope, one adapter.

A function builds an :class:`App`, declares routes on it, and exposes ``app.handle`` to
functions-framework::

    app = App("users")

    @app.route("/me", auth="user")
    def me(request: Request) -> Profile: ...

    @functions_framework.http
    def users(flask_request):
        return app.handle(flask_request)
"""
from shared.http.app import App, Route
from shared.http.request import Request
from shared.http.responses import Response, StreamingResponse, sse_event

__all__ = ["App", "Request", "Response", "Route", "StreamingResponse", "sse_event"]
