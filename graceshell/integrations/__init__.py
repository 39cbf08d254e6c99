"""Integrations of the job ledger with job frameworks. Each is one import,
or one word on the framework's command line, away:

    import graceshell.integrations.celery      # in the module that creates the Celery app
    rq worker -w graceshell.integrations.rq.Worker
    dramatiq app graceshell.integrations.dramatiq
    python -m graceshell.integrations.huey app.huey          # for huey_consumer app.huey
    python -m graceshell.integrations.arq app.WorkerSettings # for arq app.WorkerSettings

Outside graceshell they record nothing.
"""
