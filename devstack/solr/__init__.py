"""A real Solr 9 for CKAN, for the demo and the CKAN tests.

Maven Central has no Solr server distribution, only its artifacts. `.ci/install` fetches
`solr-test-framework` 9.10.1 with its runtime dependencies (solr-core, Lucene, Jetty) into
.cache/solr/lib (pom.xml here) and compiles SolrLauncher.java into .cache/solr/classes.
The launcher starts Solr with Solr's own JettySolrRunner, bound to 127.0.0.1, at /solr.

`prepare_home` writes a Solr home with one core, `ckan`, whose schema is CKAN's own
(`ckan/config/solr/schema.xml` of the installed ckan package, read as is: classic schema
factory) and whose solrconfig.xml is the minimal one here; CKAN's `solr_url` is then
`url(port)`. The index lives in the home's `ckan/data`: reuse a home to keep it.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VERSION = "9.10.1"  # pom.xml's; the newest 9.x Maven Central serves here (10.x needs Java 21)
CACHE = ROOT / ".cache" / "solr"
LIB = CACHE / "lib"
CLASSES = CACHE / "classes"
BUILT = CACHE / f".built-{VERSION}"
CORE = "ckan"
# A small heap is plenty for a test or demo index; serial GC and C1 only start the JVM faster.
JVM_OPTIONS = ["-Xms64m", "-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto"]


class SolrUnavailable(RuntimeError):
    """Solr's artifacts are not installed, or the ckan package (its schema) is missing."""


def ckan_schema() -> Path:
    """CKAN's schema.xml, from the installed ckan package (not imported: found on the path)."""
    spec = importlib.util.find_spec("ckan")
    if spec is None or not spec.submodule_search_locations:
        raise SolrUnavailable("the ckan package is not installed: pip install '.[ckan]'")
    schema = Path(next(iter(spec.submodule_search_locations))) / "config" / "solr" / "schema.xml"
    if not schema.is_file():
        raise SolrUnavailable(f"{schema} is missing")
    return schema


def prepare_home(home: Path) -> Path:
    """Write (or refresh) a Solr home at `home` with the core `ckan`; its index is kept."""
    if not BUILT.is_file():
        raise SolrUnavailable(f"Solr {VERSION} is not installed in {CACHE}: run .ci/install")
    conf = home / CORE / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    (home / "solr.xml").write_text("<solr/>\n")
    (home / CORE / "core.properties").write_text(f"name={CORE}\n")
    shutil.copyfile(ckan_schema(), conf / "schema.xml")
    shutil.copyfile(HERE / "solrconfig.xml", conf / "solrconfig.xml")
    # The schema's analyzers name these; CKAN ships none, and empty ones change nothing.
    for name in ("synonyms.txt", "protwords.txt"):
        (conf / name).touch()
    return home


def argv(home: Path, port: int, log_dir: Path, exit_on_stdin_eof: bool = False) -> list[str]:
    """The command that runs Solr on 127.0.0.1:`port` from a home made by `prepare_home`; with
    `exit_on_stdin_eof`, Solr also stops when its standard input (a pipe from its parent) closes."""
    java = shutil.which("java")
    if java is None:
        raise SolrUnavailable("no java on PATH (Java 17 or later)")
    return [
        java,
        *JVM_OPTIONS,
        f"-Dsolr.log.dir={log_dir}",
        "-cp",
        f"{CLASSES}:{LIB}/*",
        "SolrLauncher",
        str(home),
        str(port),
        *(["--exit-on-stdin-eof"] if exit_on_stdin_eof else []),
    ]


def url(port: int) -> str:
    """CKAN's `solr_url` for a Solr started on `port`."""
    return f"http://127.0.0.1:{port}/solr/{CORE}"


def ready_url(port: int) -> str:
    """Answers 200 once the core is loaded."""
    return f"{url(port)}/admin/ping"
