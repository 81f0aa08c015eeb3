"""The botrelay HTTP ingress: authenticate, validate, publish with confirm, answer."""

from botrelay.ingress.app import make_app

__all__ = ["make_app"]
