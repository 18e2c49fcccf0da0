"""The version has one source, and the package says it is typed (pure: no Redis, no process)."""
import importlib.metadata
from pathlib import Path

from click.testing import CliRunner

import minique
from minique.cli import main


def test_one_version_everywhere():
    # the distribution is minique-tasks ("minique" on the package index is another project); it provides `minique`
    assert importlib.metadata.version("minique-tasks") == minique.__version__  # pyproject reads it from the package
    assert "minique-tasks" in importlib.metadata.packages_distributions()["minique"]
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"minique, version {minique.__version__}"


def test_the_changelog_has_the_version_and_the_package_is_marked_typed():
    root = Path(minique.__file__).resolve().parent
    assert (root / "py.typed").exists()
    changelog = (root.parent / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog and f"## [{minique.__version__}]" in changelog
