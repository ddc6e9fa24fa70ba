"""docs/configuration.md is the reference generated from conf/: it is up to date and describes every key."""

from __future__ import annotations

from pathlib import Path

from medeff.config_reference import _describe, parse_conf_file, render_reference

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "python -c \"from medeff.config_reference import write_reference; write_reference('docs/configuration.md')\""


def test_configuration_page_is_up_to_date():
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert page == render_reference(ROOT / "conf"), f"docs/configuration.md is stale: run {REGENERATE}"


def test_every_group_option_and_key_is_in_the_reference():
    page = render_reference(ROOT / "conf")
    for path in sorted((ROOT / "conf").rglob("*.yaml")):
        rel = path.relative_to(ROOT / "conf").as_posix()
        assert f"`{rel}`" in page
        for key in parse_conf_file(path, ROOT / "conf").keys:
            assert f"| `{key.path}` |" in page, (rel, key.path)


def test_every_configurable_key_has_a_description():
    missing = []
    for path in sorted((ROOT / "conf").rglob("*.yaml")):
        cf = parse_conf_file(path, ROOT / "conf")
        missing += [f"{cf.name}: {k.path}" for k in cf.keys if k.value and not _describe(k)]
    assert not missing, "keys without a comment (add `# meaning` on the key's line):\n" + "\n".join(missing)


def test_parser_reads_nesting_comments_and_continuations(tmp_path):
    conf = tmp_path / "conf"
    (conf / "grp").mkdir(parents=True)
    (conf / "grp" / "opt.yaml").write_text(
        "# @package _global_\n# What this option does.\ndefaults:\n  - base\n  - _self_\n\n"
        "# the outer block\nouter:\n  inner: 3      # an inner key\n                # that goes on\n"
        "  flow: {a: 1, b: '#x'}\nplain: \"a # b\"  # quoted hash kept\n")
    cf = parse_conf_file(conf / "grp" / "opt.yaml", conf)
    assert cf.doc == "What this option does."
    assert cf.defaults == ["base", "_self_"]
    keys = {k.path: k for k in cf.keys}
    assert keys["outer"].doc == "the outer block"
    assert keys["outer.inner"].value == "3" and keys["outer.inner"].doc == "an inner key that goes on"
    assert keys["outer.flow"].value == "{a: 1, b: '#x'}"
    assert keys["plain"].value == '"a # b"' and keys["plain"].doc == "quoted hash kept"
