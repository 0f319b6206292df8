"""The offline checks behind ``python -m deploy.check``, one module per file they check.

``common`` holds what several of them read (the ports, the Dockerfile's targets, the server's options); ``build``
checks the Dockerfile and its build context, ``compose`` docker-compose.yml, ``prometheus`` deploy/prometheus.yml
and ``kubernetes`` deploy/kubernetes/. Each check returns a list of problems, one line each; empty means it passed.
"""
