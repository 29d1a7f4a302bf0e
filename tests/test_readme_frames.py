"""The README's sample frame is a real one, exactly as captured in docs/examples/."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_shows_a_captured_snapshot_frame_verbatim():
    frame = (ROOT / "docs" / "examples" / "index-snapshot.json").read_text().rstrip()
    assert f"```json\n{frame}\n```" in (ROOT / "README.md").read_text()


def test_the_changelog_states_what_a_v1_client_can_rely_on():
    text = (ROOT / "CHANGELOG.md").read_text()
    for promise in ("additive only", "ignore fields you do not know", "40xx", "41xx", "42xx"):
        assert promise in text
