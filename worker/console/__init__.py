"""The operator's console (``botrelay console``): dead letters and queue depths in the browser.

Server-rendered HTML from aiohttp, behind Basic auth, with a CSRF token on every action. It reads
and moves dead letters through ``worker.dlq``, the same code as ``botrelay dlq``.
"""
