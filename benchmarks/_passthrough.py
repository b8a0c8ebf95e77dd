"""A do-nothing ASGI middleware: P5's control arm for what `vllm serve --middleware` itself costs."""


class PassThroughMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)
