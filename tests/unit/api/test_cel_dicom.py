"""spec.dicom's rules (date options exclusive, a shift for modified dates, unique options)
say the same in CEL and in Python."""

from __future__ import annotations

import itertools
from typing import Any

import celpy
import pytest
from pydantic import ValidationError

from clawdbot_api.v1alpha1.common import CEL_RULES_ATTR
from clawdbot_api.v1alpha1.routingpolicy import Dicom, DicomOption

ENV = celpy.Environment()
FULL = DicomOption.RETAIN_FULL_DATES.value
MODIFIED = DicomOption.RETAIN_MODIFIED_DATES.value
CASES: list[dict[str, Any]] = [
    {"options": options, "dateShiftDays": shift} if shift is not None else {"options": options}
    for options, shift in itertools.product(
        [[], [FULL], [MODIFIED], [FULL, MODIFIED], ["cleanDescriptors", "cleanDescriptors"]],
        [None, 0, -30],
    )
] + [{}]


@pytest.mark.parametrize("fields", CASES)
def test_cel_and_python_agree(fields: dict[str, Any]) -> None:
    programs = [ENV.program(ENV.compile(r.rule)) for r in Dicom.__dict__[CEL_RULES_ATTR]]
    cel_ok = all(bool(p.evaluate({"self": celpy.json_to_cel(fields)})) for p in programs)
    try:
        Dicom.model_validate(fields)
        python_ok = True
    except ValidationError:
        python_ok = False
    assert cel_ok == python_ok
    options = fields.get("options", [])
    expected = (
        not (FULL in options and MODIFIED in options)
        and (MODIFIED not in options or bool(fields.get("dateShiftDays")))
        and len(set(options)) == len(options)
    )
    assert python_ok == expected


def test_private_tags_and_regions_are_checked() -> None:
    with pytest.raises(ValidationError):
        Dicom.model_validate(
            {"keepPrivateTags": [{"group": "0010", "creator": "X", "element": "08"}]}
        )
    with pytest.raises(ValidationError):
        Dicom.model_validate({"blankRegions": [{"left": 0, "top": 0, "width": 0, "height": 4}]})
    ok = Dicom.model_validate(
        {"keepPrivateTags": [{"group": "0019", "creator": "X", "element": "0a"}]}
    )
    assert ok.keep_private_tags[0].group == "0019"
