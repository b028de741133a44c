"""HTTP serving of a ranker or an LLM policy: ``cosdpo serve`` (docs/serving.md).

``cosdpo.server.app.create_app`` builds the FastAPI app; ``run_server`` runs it
on uvicorn. Both need the ``serve`` extra (``pip install "cosdpo[serve]"``).
"""
