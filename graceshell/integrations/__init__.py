"""Integrations of the job ledger with job frameworks. Each is one import away:

    import graceshell.integrations.celery      # in the module that creates the Celery app
    rq worker -w graceshell.integrations.rq.Worker

Outside graceshell they record nothing.
"""
