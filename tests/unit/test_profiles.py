"""Profiles: lookup, expected times, task lists."""

import pytest

from nrnlib.profiles import PROFILES, get_profile


def test_get_profile_and_unknown_name():
    assert get_profile("smoke").name == "smoke"
    with pytest.raises(ValueError, match="Unknown profile"):
        get_profile("huge")


def test_expected_minutes():
    smoke = get_profile("smoke")
    assert smoke.expected_minutes(["00", "01"]) == pytest.approx(smoke.minutes_cpu["00"] + smoke.minutes_cpu["01"])
    assert get_profile("full").expected_minutes(["00"]) is None


def test_task_names_and_grids():
    assert get_profile("smoke").task_names() == list(PROFILES["smoke"].tasks)
    assert len(get_profile("standard").task_names()) >= 12
    for profile in PROFILES.values():
        assert all(0 < k <= 1 for k in profile.k_grid) and 0.10 in profile.k_grid
