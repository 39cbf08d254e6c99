"""Property tests of the fleet options' parsers and of the budget a notice
cuts: any text is a value or a ValueError, never another exception."""

from __future__ import annotations

import json
import signal

from hypothesis import given
from hypothesis import strategies as st

from fuzz_support import count, examples
from graceshell.config.ladder import Step, build_ladder, parse_ladder_spec
from graceshell.config.plan import make_plan
from graceshell.config.settings import Origin, Setting
from graceshell.fleet.http import MAX_REQUEST, request_path
from graceshell.fleet.notices import fitted_plan, parse_time, shortened_ladder
from graceshell.fleet.options import format_address, parse_address, parse_metadata_url, parse_provider


@examples(200)
@given(st.one_of(st.text(max_size=60), st.from_regex(r"\[?[0-9a-f:.]{0,20}\]?:[0-9]{1,6}", fullmatch=True)))
def test_an_address_is_parsed_or_refused_with_a_value_error(text):
    count("fleet address")
    for parse in (parse_address, parse_metadata_url, parse_provider):
        try:
            parse(text)
        except ValueError as exc:
            assert "\n" not in str(exc).strip() or "\n" in text
    try:
        host, port = parse_address(text)
    except ValueError:
        return
    assert 0 < port < 65536
    assert parse_address(format_address((host, port))) == (host, port)


@examples(200)
@given(st.binary(max_size=MAX_REQUEST))
def test_any_request_head_gives_a_path_or_an_error_response(head):
    count("fleet request head")
    path, error = request_path(head)
    assert (path is None) != (error is None)
    if error is not None:
        assert error.startswith(b"HTTP/1.0 4")


@examples(100)
@given(st.one_of(st.text(max_size=40), st.none(), st.integers(), st.floats()))
def test_a_metadata_time_is_read_or_none(text):
    count("fleet metadata time")
    assert parse_time(text, ("%Y-%m-%dT%H:%M:%SZ", "%a, %d %b %Y %H:%M:%S GMT")) is None or isinstance(text, str)


SPECS = ["TERM@0s", "TERM@0s,QUIT@budget-5s", "TSTP@0s,TERM@0s,QUIT@budget-reserve", "INT@0s,TERM@10s,QUIT@20s"]


@examples(200)
@given(st.sampled_from(SPECS), st.floats(min_value=21, max_value=600), st.floats(min_value=0, max_value=600))
def test_a_shortened_ladder_keeps_its_order_and_ends_at_the_new_budget(spec, budget, shorter):
    count("fleet shortened ladder")
    ladder = build_ladder(parse_ladder_spec(spec), budget)
    shorter = min(shorter, budget)
    fitted = shortened_ladder(ladder, shorter)
    assert [s.signal for s in fitted] == [s.signal for s in ladder]
    assert fitted[-1] == Step(shorter, signal.SIGKILL)
    assert all(0 <= a.at <= b.at <= shorter for a, b in zip(fitted, fitted[1:]))
    for old, new in zip(ladder[:-1], fitted[:-1]):  # a cold step keeps its reserve, up to half the budget
        if old.at > 0:
            assert shorter - new.at == min(budget - old.at, shorter / 2) or new.at == 0


def test_a_notice_cuts_the_budget_only_when_its_deadline_is_sooner():
    settings = {"budget": Setting(25.0, Origin("--budget")), "platform": Setting("none", Origin("--platform"))}
    plan = make_plan(["true"], settings, {})
    assert fitted_plan(plan, None) == (plan, False)
    assert fitted_plan(plan, 120.0) == (plan, False)  # AWS's two minutes: the plan's own 25 s
    fitted, cut = fitted_plan(plan, 10.0)
    assert cut and fitted.budget == fitted.kill_at == 8.0 and plan.budget == 25.0
    assert json.dumps(fitted.ladder[-1].at) == "8.0"
