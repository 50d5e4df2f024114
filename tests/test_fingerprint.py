"""The fingerprint of the settings in use: a hash per section, secrets counted but never kept."""

from __future__ import annotations

from bridge.fingerprint import TEMPLATE_FILES, differing, fingerprint, section_hashes


def test_a_changed_secret_changes_its_section_and_no_hash_holds_it(make_settings):
    before = section_hashes(make_settings({"server": {"metrics_token": "sec-old-token"}}))
    after = section_hashes(make_settings({"server": {"metrics_token": "sec-new-token"}}))
    assert differing(before, after) == ["server"]
    assert fingerprint(before) != fingerprint(after)
    assert not any("sec-" in value for value in [*before.values(), *after.values()])


def test_the_same_settings_read_twice_have_the_same_fingerprint(make_settings):
    extra = {"delivery": {"lease": "20s"}, "slack": {"bot_token": "xoxb-1", "channel": "C1"}}
    assert fingerprint(section_hashes(make_settings(extra))) == fingerprint(
        section_hashes(make_settings(extra)))


def test_an_edited_template_file_changes_the_template_files_only(make_settings, tmp_path):
    folder = tmp_path / "my-templates"
    (folder / "slack").mkdir(parents=True)
    template = folder / "slack" / "message_visitor.json.j2"
    template.write_text("one")
    settings = make_settings({"templates": {"dir": str(folder)}})
    before = section_hashes(settings)
    template.write_text("two")
    assert differing(before, section_hashes(settings)) == [TEMPLATE_FILES]


def test_sections_only_one_side_has_count_as_differing():
    assert differing({"slack": "a", "jira": "b"}, {"slack": "a", "crm": "c"}) == ["jira", "crm"]
