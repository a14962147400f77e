"""The Matrix application service: homeserver -> service HTTP API and service -> homeserver client.

``events`` parses what the homeserver pushes, ``http`` serves the spec's routes, ``transactions``
processes a transaction exactly once, ``homeserver`` talks back with the appservice token.
"""
