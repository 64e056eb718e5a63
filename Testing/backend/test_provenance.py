"""What a run record says of the code that made it: the commit of the source checkout, and whether it was modified."""

import shutil
import subprocess
from pathlib import Path

import spatial_al
from spatial_al.provenance import code_revision, environment

PROVENANCE = Path(spatial_al.__file__).resolve().parent / "provenance.py"


def git(folder, *arguments):
    command = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org", *arguments]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, check=True).stdout.strip()


def test_the_commit_and_its_modifications_are_read_from_the_checkout_the_package_runs_from(tmp_path):
    package = tmp_path / "repository" / "spatial_al"
    package.mkdir(parents=True)
    shutil.copy(PROVENANCE, package / "provenance.py")
    assert code_revision.__wrapped__(package) is None  # a folder outside any git checkout: an installed package
    git(package.parent, "init", "-q")
    assert code_revision.__wrapped__(package) is None  # inside a repository that does not track this code
    git(package.parent, "add", ".")
    git(package.parent, "commit", "-q", "-m", "first")
    commit = git(package.parent, "rev-parse", "HEAD")
    assert code_revision.__wrapped__(package) == {"commit": commit, "modified": False}
    (package / "untracked.py").write_text("")
    assert code_revision.__wrapped__(package) == {"commit": commit, "modified": False}  # untracked files aside
    (package / "provenance.py").write_text("# changed\n")
    assert code_revision.__wrapped__(package) == {"commit": commit, "modified": True}


def test_every_run_record_carries_the_code_revision():
    assert environment()["code"] == code_revision()
