"""The README points to the generated configuration reference, and CI runs its test command."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_points_to_the_generated_settings_reference_and_copies_no_setting():
    """A hand-written copy of the settings table drifts; the reference is generated and tested."""
    readme = (ROOT / "README.md").read_text()
    assert "(docs/configuration.md)" in readme
    assert "| `MLTOKENS_" not in readme


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert (ROOT / ".ci/run").read_text().strip().splitlines()[-1] == "make test"
