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


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_is_valid_for_every_task(name):
    """Sizes are clipped to what each task has (never more than its splits; attribution in equal
    chunks), so no profile crashes on any built-in task (the old full profile asked trivia_qa for 8
    chunks of 32 of its 60 train examples)."""
    from nrnlib.profiles import N_CHUNKS, plan, task_sizes
    from nrnlib.tasks import get_task, list_tasks

    profile = get_profile(name)
    for task_name in list_tasks():
        task, sizes = get_task(task_name), task_sizes(profile, task_name)
        assert 0 < sizes.n_eval <= min(profile.n_eval, len(task.test))
        assert 0 < sizes.n_eval_conditions <= len(task.test) and 0 < sizes.n_train <= len(task.train)
        assert sizes.n_attribution % N_CHUNKS == 0 and N_CHUNKS <= sizes.n_attribution <= len(task.train)
        assert sizes.shots <= len(task.train)
        for size, (asked, used) in sizes.clipped.items():
            assert asked == getattr(profile, size) and used < asked
    rows = plan(profile, ["00", "01", "02", "03", "07"])
    assert {r["notebook"] for r in rows} == {"00", "01", "02", "03", "07"}


def test_a_task_too_small_for_any_profile_is_refused_clearly():
    from nrnlib.profiles import ProfileError, task_sizes
    from nrnlib.tasks import Task

    records = [{"input": f"item {i}", "target": "yes" if i % 2 else "no"} for i in range(6)]
    tiny = Task.from_records("tiny", records, "classification", labels=("yes", "no"))
    with pytest.raises(ProfileError, match="at least"):
        task_sizes(get_profile("smoke"), tiny)


def test_dry_run_prints_the_plan_and_exits_zero(capsys):
    from nrnlib.__main__ import main

    assert main(["reproduce", "--profile", "full", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "trivia_qa 56" in out and "n_attribution = 256" in out
