"""CLI, from the repository root:

python -m testing.keycloak_server --port 8081 --admin-user admin --admin-password admin
"""

from __future__ import annotations

import argparse
import contextlib

from .server import KeycloakTestServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m testing.keycloak_server", description="Keycloak-compatible test server"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--admin-user", default="admin")
    parser.add_argument("--admin-password", default="admin")
    args = parser.parse_args(argv)
    server = KeycloakTestServer(args.admin_user, args.admin_password, args.host, args.port, log_requests=True)
    print(f"Keycloak test server on {server.url} (admin user {args.admin_user!r})", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
