"""The demo: the whole system (issuer, relay, two verifying services, a webhook partner and a
load generator) on one machine, rotating keys every few seconds with no failed request.

Each role is a plain ``keyherald demo …`` command, so docker-compose.yml declares exactly the
processes ``keyherald demo`` starts on its own.
"""
