"""The README's configuration reference names every setting, and CI runs its test command."""
from pathlib import Path

from token_service.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text()
    missing = [env for env, _, _ in Settings().describe() if f"`{env}`" not in readme]
    assert missing == []


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert (ROOT / ".ci/run").read_text().strip().splitlines()[-1] == "make test"
