"""The web editor: a Ray Serve application (FastAPI ingress + a batched model deployment) and its page.

config.ServeConfig says what is served and how; app.build(config) returns the Serve application;
app.app_builder is the `serve run` import path. Ray Serve and FastAPI are imported by those modules only.
"""
