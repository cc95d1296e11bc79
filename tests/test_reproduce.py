"""docs/reproduce.md's table of the original project's values against the files in params/original/."""
import re

import pytest
import yaml

from utils.my_utils import gan_parser, kd_parser, parse_args, prune_parser, train_parser

from .conftest import ROOT

PARSERS = {"default.yaml": (train_parser, []), "IMP.yaml": (prune_parser, ["--lth"]),
           "CS.yaml": (prune_parser, ["--cs"]), "KD.yaml": (kd_parser, ["--teacher-weights", "t.pt"]),
           "KD_GAN.yaml": (gan_parser, ["--teacher-weights", "t.pt"])}


def table_rows():
    """(file, key, value) of every row of the "original project's values" table."""
    text = (ROOT / "docs" / "reproduce.md").read_text()
    section = text.split("## The original project's values (params/original/)", 1)[1]
    rows = []
    for line in section.splitlines():
        m = re.match(r"\| (\S+\.yaml) \| (\w+) \| (.+?) \| .+ \|$", line)
        if m:
            rows.append((m[1], m[2], yaml.safe_load(m[3])))
    return rows


def test_the_table_covers_every_file_and_key_a_file_sets():
    rows = table_rows()
    assert {f for f, _, _ in rows} == set(PARSERS)
    in_table = {(f, k) for f, k, _ in rows}
    unlisted = []
    for f in PARSERS:
        own = yaml.safe_load((ROOT / "params" / "original" / f).read_text())
        unlisted += [(f, k) for k in own if k not in ("inherit_from", "data", "cfg") and (f, k) not in in_table]
    assert not unlisted, f"params/original keys missing from docs/reproduce.md: {unlisted}"


@pytest.mark.parametrize("file, key, value", table_rows())
def test_each_value_in_the_table_is_what_the_params_file_gives(file, key, value):
    parser, extra = PARSERS[file]
    args = parse_args(parser(), ["--params", str(ROOT / "params" / "original" / file), *extra])
    got = getattr(args, key)
    if isinstance(value, float) or isinstance(got, float):
        assert got == pytest.approx(value, rel=1e-12), (file, key)
    else:
        assert got == value, (file, key)
