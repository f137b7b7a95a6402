"""A real OCI registry for the tests: Debian's docker-registry (distribution 2.8) on 127.0.0.1.

``registry_server`` runs without auth, ``auth_registry`` with htpasswd (bcrypt) auth; both listen on
a free port, keep their blobs in a temporary folder (``storage``) and log to ``log``, and are stopped
(terminate, then kill) when the tests that use them end. The fixtures live in ``remote_fixtures``
so tests/delivery can use them too.
"""

from remote_fixtures import auth_registry, docker_config, registry_server, tls_registry

__all__ = ["auth_registry", "docker_config", "registry_server", "tls_registry"]
