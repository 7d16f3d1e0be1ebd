"""The /v1 HTTP API (DESIGN.md section 5): one route table (``routes``), wire schemas (``schemas``), auth
(``auth``), the Starlette app (``server``), serving it with uvicorn (``serve``), and the client (``client``).

Importing this package imports nothing heavy: Starlette and uvicorn load only where a server is built.
"""
