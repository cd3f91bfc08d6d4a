"""Space files are data: bad files give one error naming file, key path and line, and what is allowed."""

from pathlib import Path

import pytest

from spaces import SpaceError, load_space
from spaces.schema import load_space_file, parse_space

AGD = (Path(__file__).resolve().parents[1] / "spaces" / "agd.yaml").read_text()
RESNET = (Path(__file__).resolve().parents[1] / "spaces" / "resnet.yaml").read_text()
INCEPTION = (Path(__file__).resolve().parents[1] / "spaces" / "inception.yaml").read_text()


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def error_for(text: str) -> SpaceError:
    with pytest.raises(SpaceError) as info:
        parse_space(text, file="my.yaml", name="my")
    return info.value


def test_builtin_spaces_load():
    for name in ("resnet", "inception", "agd"):
        assert load_space(name).family == name


def test_unknown_operator_names_allowed_ones_and_line():
    text = AGD.replace("operators: [conv, res, sep, skip]", "operators: [conv, rez, sep, skip]")
    err = error_for(text)
    assert "unknown operator 'rez'" in str(err) and "allowed: conv, res, sep, skip" in str(err)
    assert err.path == "operators[1]" and err.line == line_of(text, "operators:")
    assert str(err).startswith(f"my.yaml:{err.line}: operators[1]: ")


def test_width_not_positive_integer():
    text = RESNET.replace("stem:  {choices: [16, 24,", "stem:  {choices: [16, -24,")
    err = error_for(text)
    assert err.path == "widths.stem.choices[1]" and err.line == line_of(text, "stem:")
    assert "-24 is not allowed; must be a positive integer" in str(err)


def test_width_of_wrong_type():
    text = RESNET.replace("stem:  {choices: [16, 24,", "stem:  {choices: [16, wide,")
    err = error_for(text)
    assert "'wide' is not a positive integer" in str(err) and err.path == "widths.stem.choices[1]"


def test_empty_choice_list():
    text = RESNET.replace("up2:   {choices: [16, 24, 32, 40, 48, 56, 64], scale: 1}", "up2:   {choices: [], scale: 1}")
    err = error_for(text)
    assert "empty choice list" in str(err) and err.path == "widths.up2.choices"
    assert err.line == line_of(text, "up2:")


def test_missing_key():
    text = "\n".join(line for line in INCEPTION.splitlines() if not line.startswith("kernel_sizes"))
    err = error_for(text)
    assert "missing key 'kernel_sizes'" in str(err)


def test_missing_width_site():
    text = "\n".join(line for line in RESNET.splitlines() if not line.strip().startswith("down1:"))
    err = error_for(text)
    assert "missing key 'down1'" in str(err) and err.path == "widths.down1"
    assert err.line == line_of(text, "widths:")


def test_unknown_key_lists_allowed_keys():
    text = RESNET.replace("dropout: 0.0", "dropuot: 0.0")
    err = error_for(text)
    assert "unknown key 'dropuot'" in str(err) and "allowed keys:" in str(err) and "dropout" in str(err)
    assert err.line == line_of(text, "dropuot")


def test_block_count_zero():
    text = RESNET.replace("blocks: 9 ", "blocks: 0 ")
    err = error_for(text)
    assert "a block count of 0 is not allowed" in str(err) and err.path == "blocks"
    assert err.line == line_of(text, "blocks: 0")


def test_wrong_type_for_norm_and_unknown_norm():
    err = error_for(RESNET.replace("norm: instance", "norm: group"))
    assert "unknown value 'group'; allowed: instance, batch, none" in str(err)
    err = error_for(RESNET.replace("in_channels: 3", "in_channels: three"))
    assert "'three' is not a positive integer" in str(err) and err.path == "in_channels"


def test_unknown_family():
    text = RESNET.replace("family: resnet", "family: vgg")
    err = error_for(text)
    assert "unknown family 'vgg'; allowed: resnet, inception, agd, unet" in str(err)
    assert err.line == line_of(text, "family: vgg")


def test_yaml_syntax_error_has_line():
    text = RESNET.replace("blocks: 9 ", "blocks: [9 ")
    err = error_for(text)
    assert "not valid YAML" in str(err) and err.line is not None


def test_not_a_mapping():
    err = error_for("- just\n- a list\n")
    assert "must be a mapping" in str(err)


def test_even_kernel_size():
    text = INCEPTION.replace("kernel_sizes: [1, 3, 5]", "kernel_sizes: [1, 4, 5]")
    err = error_for(text)
    assert "kernel size 4 is even" in str(err) and err.path == "kernel_sizes[1]"


def test_duplicate_choices_and_resolution():
    err = error_for(RESNET.replace("up2:   {choices: [16, 24,", "up2:   {choices: [16, 16,"))
    assert "duplicate entries" in str(err)
    err = error_for(RESNET.replace("resolution: 256", "resolution: 250"))
    assert "250 is not a multiple of 4" in str(err) and err.path == "resolution"


def test_too_many_groups_and_bad_ratio():
    err = error_for(RESNET.replace("blocks: 9 ", "blocks: 2 "))
    assert "3 block groups but only 2 blocks" in str(err)
    err = error_for(AGD.replace("width_ratios: [0.25, 0.5, 0.75, 1.0]", "width_ratios: [0.25, 1.5]"))
    assert "1.5 is too large; must be <= 1" in str(err) and err.path == "width_ratios[1]"


def test_missing_file(tmp_path):
    with pytest.raises(SpaceError, match="file not found"):
        load_space_file(tmp_path / "nope.yaml")


def test_user_copy_with_changed_choices_is_used_by_path(tmp_path):
    text = RESNET.replace("blocks: 9 ", "blocks: 6 ").replace("[16, 24, 32, 40, 48, 56, 64], scale: 4}", "[8, 16], scale: 4}")
    path = tmp_path / "small.yaml"
    path.write_text(text)
    space = load_space(str(path))
    assert space.name == "small" and space.spec.blocks == 6
    assert [s.choices for s in space.sites if s.name.startswith("group")] == [(8, 16)] * 3
    assert space.size == 7 ** 4 * 2 ** 4


def test_unet_levels_must_match_and_resolution_must_be_a_multiple(root):
    text = (root / "spaces" / "unet.yaml").read_text()
    one_up_fewer = text.replace("  - {choices: [16, 32, 48, 64]}\n", "", 2)  # the first down level and up1
    err = error_for(one_up_fewer.replace("down:\n", "down:\n  - {choices: [16, 32, 48, 64]}\n"))
    assert "up: 6 up levels for 8 down levels" in str(err)
    err = error_for(text.replace("resolution: 256", "resolution: 192"))
    assert "resolution: 192 is not a multiple of 256 (8 stride-2 downsamplings)" in str(err)
    err = error_for(text.replace("norm: batch ", "widths: {}\nnorm: batch "))
    assert "unknown key 'widths'" in str(err)


def test_a_space_error_survives_pickling():
    # a Ray worker's error reaches the driver pickled: it must come back whole, not as a TypeError
    import pickle

    from spaces.errors import SpaceError

    err = pickle.loads(pickle.dumps(SpaceError("my.yaml", "widths.stem", 7, "unknown key 'x'")))
    assert isinstance(err, SpaceError) and str(err) == "my.yaml:7: widths.stem: unknown key 'x'" and err.line == 7


BOMB = """family: resnet
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
"""


@pytest.mark.parametrize("text, message, needle", [
    (BOMB, "YAML anchors and aliases (&name, *name) are not allowed", "a: &a"),
    (RESNET.replace("block: mobile", "block: mobile\nblock: plain"), "key 'block' is given twice", "block: plain          #"),
    (RESNET.replace("blocks: 9 ", "blocks: 9" + "9" * 5000 + " "), "a value cannot be read", None),
    (RESNET.replace("stem:  {choices: [16, 24,", "stem:  {choices: [1000000000, 24,"),
     "1000000000 is too large; must be <= 4096", "stem:"),
    (RESNET.replace("trunk: {choices: [16, 24, 32, 40, 48, 56, 64], scale: 4}",
                    "trunk: {choices: [16, 24, 32, 40, 48, 56, 2048], scale: 4}"),
     "choice 2048 x scale 4 = 8192 channels; at most 4096 channels per layer", "trunk:"),
    (RESNET.replace("blocks: 9 ", "blocks: 100000 "), "100000 is too large; must be <= 64", "blocks:"),
    (RESNET.replace("resolution: 256", "resolution: 65536"), "65536 is too large; must be <= 8192", "resolution:"),
    (INCEPTION.replace("kernel_sizes: [1, 3, 5]", "kernel_sizes: [1, 3, 99]"), "99 is too large; must be <= 15",
     "kernel_sizes:"),
])
def test_space_files_that_would_exhaust_the_machine_are_refused_in_one_line(text, message, needle):
    err = error_for(text)
    assert message in str(err) and "\n" not in str(err)
    if needle is not None:
        assert err.line == line_of(text, needle)


def test_the_bounds_admit_real_generators(root):
    # ESRGAN-sized: 23 blocks of 64 channels; the paper-sized built-in spaces
    esrgan = RESNET.replace("blocks: 9 ", "blocks: 23 ")
    assert parse_space(esrgan, file="esrgan.yaml", name="esrgan").blocks == 23
    for name in ("resnet", "inception", "agd", "unet"):
        load_space(name)
