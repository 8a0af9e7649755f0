"""`python -m token_service.validator`: see server.py."""

from .server import main

main()
