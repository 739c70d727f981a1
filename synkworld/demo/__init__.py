"""The demo map that `synkworld demo` (and `make demo`) serves: agents, pins, your avatar.

It ships in the package, so that it runs after `pip install synkworld`; its
source is also the longest worked example of an application: `world.py` (the
object types and the simulation), `app.py` (the server: store, handlers,
hooks) and `static/` (the page, on the JavaScript client).
"""
