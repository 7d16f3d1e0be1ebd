"""The built web dashboard (``index.html`` and ``assets/``), served at ``/`` by the /v1 app through
importlib.resources; its source lives in ``web/`` at the top of the repository."""
