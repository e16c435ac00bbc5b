"""bench/mesh_reliability.py: judging answers, blaming failures, RSS verdicts, schedules, the report."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import mesh_reliability as bench  # noqa: E402

from tulle.controlplane.istio.documents import load_files  # noqa: E402
from tulle.controlplane.istio.validation import analyze  # noqa: E402
from tulle.samples.bookinfo import app  # noqa: E402

INSTANCES = {"productpage": ["productpage-v1"], "details": ["details-v1"],
             "reviews": ["reviews-v1", "reviews-v2", "reviews-v3"], "ratings": ["ratings-v1"]}
PAGE = bench.Target("page", "productpage", "productpage-v1", "127.0.0.1", 9080, "/productpage?format=json")
REVIEWS = bench.Target("reviews (direct)", "reviews", "productpage-v1", "127.0.0.1", 15001,
                       "http://reviews:9080/reviews/0")
RATINGS = bench.Target("ratings (direct)", "ratings", "productpage-v1", "127.0.0.1", 15001,
                       "http://ratings:9080/ratings/0")


# ---------------------------------------------------------------- judging real bookinfo answers


@pytest.fixture
def bookinfo():
    """productpage -> details, reviews v2 -> ratings, wired directly (no mesh), in threads on free ports."""
    ratings = app.start_in_thread("ratings")
    reviews = app.start_in_thread("reviews", "v2", upstreams=app.Upstreams(
        {"ratings": f"127.0.0.1:{ratings.server_address[1]}"}, timeout=2))
    details = app.start_in_thread("details")
    productpage = app.start_in_thread("productpage", upstreams=app.Upstreams(
        {"details": f"127.0.0.1:{details.server_address[1]}", "reviews": f"127.0.0.1:{reviews.server_address[1]}"},
        timeout=2))
    servers = {"ratings": ratings, "reviews": reviews, "details": details, "productpage": productpage}
    yield servers
    for server in servers.values():
        server.shutdown()
        server.server_close()


def _get(server, path: str) -> tuple[int, bytes]:  # noqa: ANN001
    target = bench.Target("t", "productpage", "productpage-v1", "127.0.0.1", server.server_address[1], path)
    client = bench.Client(0, [target], bench.Recorder(0.0), threading.Event(), 5.0, fresh=True)
    status, raw, error, _ = client.call(target, "test")
    assert not error
    return status, raw


def test_a_whole_page_and_a_whole_reviews_answer_have_no_failed_hop(bookinfo) -> None:  # noqa: ANN001
    assert bench.judge(PAGE, *_get(bookinfo["productpage"], "/productpage?format=json")) == []
    assert bench.judge(REVIEWS, *_get(bookinfo["reviews"], "/reviews/0")) == []
    assert bench.judge(RATINGS, *_get(bookinfo["ratings"], "/ratings/0")) == []


def test_a_page_that_hides_a_failed_ratings_call_behind_200_is_a_failed_hop_of_that_reviews(bookinfo) -> None:  # noqa: ANN001
    bookinfo["ratings"].shutdown()
    bookinfo["ratings"].server_close()
    status, raw = _get(bookinfo["productpage"], "/productpage?format=json")
    assert status == 200  # bookinfo shows the page anyway
    assert bench.judge(PAGE, status, raw) == [
        bench.FailedHop("reviews-v2", "ratings", "Ratings service is currently unavailable")]
    assert bench.judge(REVIEWS, *_get(bookinfo["reviews"], "/reviews/0")) == [
        bench.FailedHop("reviews-v2", "ratings", "Ratings service is currently unavailable")]


def test_a_page_without_reviews_names_the_reviews_call_productpage_made(bookinfo) -> None:  # noqa: ANN001
    bookinfo["reviews"].shutdown()
    bookinfo["reviews"].server_close()
    hops = bench.judge(PAGE, *_get(bookinfo["productpage"], "/productpage?format=json"))
    assert [(hop.via, hop.service) for hop in hops] == [("productpage-v1", "reviews")]
    assert "reviews unreachable" in hops[0].reason


def test_no_answer_a_proxy_error_or_a_body_that_is_not_json_fail_the_hop_the_client_made() -> None:
    assert bench.judge(PAGE, 0, b"", "ConnectionRefusedError: refused") == [
        bench.FailedHop("productpage-v1", "productpage", "ConnectionRefusedError: refused")]
    assert bench.judge(REVIEWS, 0, b"", "no answer within 10s", True)[0].timeout
    [hop] = bench.judge(REVIEWS, 503, b"no healthy upstream")
    assert (hop.via, hop.service, hop.reason) == ("productpage-v1", "reviews", "HTTP 503: no healthy upstream")
    assert bench.judge(PAGE, 200, b"<html>")[0].reason.startswith("HTTP 200: <html>")
    assert bench.judge(RATINGS, 200, json.dumps({"served_by": "ratings-v1"}).encode())[0].service == "ratings"


# ---------------------------------------------------------------- blame


def test_suspects_are_the_carrying_sidecar_and_every_instance_of_the_called_service() -> None:
    hop = bench.FailedHop("productpage-v1", "reviews", "reviews answered 503")
    assert bench.suspects(hop, INSTANCES) == {
        "sidecar:productpage-v1", "sidecar:reviews-v1", "app:reviews-v1", "sidecar:reviews-v2", "app:reviews-v2",
        "sidecar:reviews-v3", "app:reviews-v3"}
    # a timeout may come from further down: reviews calls ratings
    timed_out = bench.FailedHop("productpage-v1", "reviews", "timed out", timeout=True)
    assert {"sidecar:ratings-v1", "app:ratings-v1"} <= bench.suspects(timed_out, INSTANCES)
    assert "app:ratings-v1" not in bench.suspects(hop, INSTANCES)
    assert bench.downstream("productpage") == {"details", "reviews", "ratings"}


def _failure(started: float, ended: float, *hops: bench.FailedHop) -> bench.Failure:
    return bench.Failure(started, ended, "page", "id", 200, list(hops), "quiet", "canary")


def test_a_failure_is_blamed_on_a_suspect_outage_whose_window_overlaps_it() -> None:
    ratings_hop = bench.FailedHop("reviews-v2", "ratings", "Ratings service is currently unavailable")
    outage = bench.Outage("sidecar:ratings-v1", "sigkill-sidecar", started=10.0, recovered=15.0)
    other = bench.Outage("app:details-v1", "sigkill-app", started=9.0, recovered=30.0)
    outages = [other, outage]
    assert bench.attribute(_failure(12.0, 12.1, ratings_hop), outages, INSTANCES, settle=3) is outage
    # in flight at the signal; sent just before it (clock granularity); after it was back, within settle
    assert bench.attribute(_failure(9.0, 10.2, ratings_hop), outages, INSTANCES, settle=3) is outage
    assert bench.attribute(_failure(9.4, 9.6, ratings_hop), outages, INSTANCES, settle=3) is outage
    assert bench.attribute(_failure(17.9, 18.0, ratings_hop), outages, INSTANCES, settle=3) is outage
    # too early, too late, or an outage of something the request did not involve
    assert bench.attribute(_failure(8.0, 9.0, ratings_hop), outages, INSTANCES, settle=3) is None
    assert bench.attribute(_failure(18.1, 18.2, ratings_hop), outages, INSTANCES, settle=3) is None
    assert bench.attribute(_failure(12.0, 12.1, ratings_hop), [other], INSTANCES, settle=3) is None
    # still down at the end of the run: open-ended
    still_down = bench.Outage("app:ratings-v1", "sigkill-app", started=50.0)
    assert bench.attribute(_failure(500.0, 500.1, ratings_hop), [still_down], INSTANCES, settle=3) is still_down


def test_the_control_plane_never_explains_a_failure() -> None:
    hop = bench.FailedHop("productpage-v1", "details", "HTTP 503: no healthy upstream")
    down = bench.Outage(bench.CONTROL_PLANE, "sigkill-control-plane", started=10.0, recovered=20.0)
    assert bench.CONTROL_PLANE not in bench.suspects(hop, INSTANCES)
    assert bench.attribute(_failure(12.0, 12.1, hop), [down], INSTANCES, settle=3) is None


def test_when_a_failure_fell_in_its_outage() -> None:
    outage = bench.Outage("sidecar:reviews-v2", "sigterm-sidecar", started=10.0, recovered=15.0)
    assert bench.when_in(_failure(9.9, 10.3), outage) == "in flight"
    assert bench.when_in(_failure(10.0, 10.3), outage) == "down"
    assert bench.when_in(_failure(15.5, 15.6), outage) == "settling"


# ---------------------------------------------------------------- RSS


def _series(values_mib: list[float], every: float = 10.0) -> list[tuple[float, int]]:
    return [(i * every, int(value * 1024)) for i, value in enumerate(values_mib)]


def test_rss_after_warm_up_that_stays_put_is_flat_despite_one_spike() -> None:
    samples = _series([20, 40, 50] + [55.0] * 10 + [70.0, 55.2, 55.1])  # the first 30 s are warm-up
    summary = bench.summarize_rss("sidecar-x/proxy", 7, samples, warmup=30, max_growth_mib=10,
                                  max_growth_percent=20)
    assert summary.verdict == "flat"
    assert (summary.start_mib, summary.end_mib, summary.growth_mib) == (55.0, 55.2, 0.2)
    assert summary.samples == 13


def test_rss_growing_beyond_either_limit_grew() -> None:
    leaking = _series([50 + i for i in range(20)])  # +1 MiB per 10 s
    by_mib = bench.summarize_rss("cp", 1, leaking, warmup=0, max_growth_mib=10, max_growth_percent=0)
    assert by_mib.verdict == "grew" and by_mib.growth_mib == 17.0  # medians: 51 -> 68
    assert by_mib.slope_mib_per_hour == pytest.approx(360.0)
    small = _series([20.0] * 5 + [26.0] * 5)  # +6 MiB is 30 %
    assert bench.summarize_rss("app", 2, small, 0, 10, 20).verdict == "grew"
    assert bench.summarize_rss("app", 2, small, 0, 10, 0).verdict == "flat"  # 0: that limit is off


def test_a_process_with_too_few_samples_after_its_warm_up_gets_no_verdict() -> None:
    late = [(t + 100.0, kib) for t, kib in _series([30.0] * 8)]  # born mid-run (a restart): its own warm-up
    summary = bench.summarize_rss("control-plane", 3, late, warmup=60, max_growth_mib=10, max_growth_percent=20)
    assert summary.verdict == "too short" and summary.start_mib is None and summary.samples == 2
    assert bench.summarize_rss("x", 4, [], 60, 10, 20).verdict == "too short"


# ---------------------------------------------------------------- schedules


def test_the_chaos_plan_is_the_same_for_a_seed_and_covers_every_action_within_its_ranges() -> None:
    workloads = [name for names in INSTANCES.values() for name in names]

    def take(seed: int, count: int) -> list[bench.ChaosStep]:
        plan = bench.chaos_plan(seed, workloads, gap=(2.0, 4.0), down=(1.0, 3.0))
        return [next(plan) for _ in range(count)]

    steps = take(7, 200)
    assert steps == take(7, 200) and steps != take(8, 200)
    assert set(Counter(step.action for step in steps)) == set(bench.ACTIONS)
    assert all(2.0 <= step.wait <= 4.0 and 1.0 <= step.down_for <= 3.0 for step in steps)
    for step in steps:
        if step.action == "sigkill-control-plane":
            assert step.target == bench.CONTROL_PLANE and bench.outage_component(step) == bench.CONTROL_PLANE
        else:
            assert step.target in workloads
    app_kill = next(step for step in steps if step.action == "sigkill-app")
    assert bench.outage_component(app_kill) == f"app:{app_kill.target}"
    term = next(step for step in steps if step.action == "sigterm-sidecar")
    assert bench.outage_component(term) == f"sidecar:{term.target}"


def test_every_config_step_is_valid_istio_and_makes_before_it_breaks() -> None:
    """A request may only fail for a reason the soak is looking for: as Istio's best practices
    say, a route uses a subset only once an earlier step defined it (its cluster and endpoints
    have reached the proxies), and a subset goes only after no route uses it."""
    routes: dict[str, set[str]] = {}  # VirtualService name -> subsets it routes to
    subsets: dict[str, set[str]] = {}  # DestinationRule name -> subsets it defines
    for step in bench.CONFIG_CYCLE * 2:
        defined_before = set().union(*subsets.values()) if subsets else set()
        if step.apply is not None:
            resources, diagnostics = load_files([step.apply])
            # each file alone: its subsets live in another step's DestinationRule (IST0101 by itself),
            # which the make-before-break checks below follow across the cycle
            problems = [d for d in diagnostics + analyze(resources) if d.level == "error" and d.code != "IST0101"]
            assert not problems, (step.label, problems)
            for resource in resources:
                if resource.kind == "VirtualService":
                    routes[resource.name] = {destination["destination"]["subset"]
                                             for rule in resource.spec["http"] for destination in rule["route"]}
                    assert routes[resource.name] <= defined_before, (step.label, "routes to a subset defined "
                                                                     "in the same step")
                elif resource.kind == "DestinationRule":
                    subsets[resource.name] = {subset["name"] for subset in resource.spec.get("subsets", [])}
        else:
            kind, name = step.delete
            (routes if kind == "virtualservice" else subsets).pop(name, None)
        defined = set().union(*subsets.values()) if subsets else set()
        assert set().union(*routes.values()) <= defined if routes else True, step.label
    assert any(step.delete for step in bench.CONFIG_CYCLE) and bench.ROUND_ROBIN.delete == ("virtualservice", "reviews")


# ---------------------------------------------------------------- verdict and report


def _args(mode: str, **overrides) -> argparse.Namespace:  # noqa: ANN003
    return bench.parse_args([mode, "--minutes", "1", *(f"--{k.replace('_', '-')}={v}" for k, v in overrides.items())])


def _result(tmp_path: Path, mode: str, failures: list[bench.Failure], outages: list[bench.Outage],
            rss: list[bench.RssSummary] | None = None) -> dict:
    args = _args(mode)
    state = bench.RunState(args, bench.Mesh(tmp_path, delta=False))
    state.outages = outages
    state.events = [bench.Event(11.0, "fault", "sigkill-app ratings-v1 (restart in 2s)")]
    recorder = bench.Recorder(0.0)
    recorder.ok["page"] = 100
    for failure in failures:
        recorder.failed[failure.target] += 1
        recorder.failures.append(failure)
        outage = bench.attribute(failure, outages, INSTANCES, args.settle)
        if outage is not None:
            failure.attributed_to = f"{outage.action} {outage.component} at +{outage.started:.1f}s"
            failure.when = bench.when_in(failure, outage)
    chaos = Counter(outage.action for outage in outages)
    return bench.build_result(args, state, recorder, rss or [], chaos, "2026-01-01T00:00:00Z", ["0", "0", "0"],
                              INSTANCES)


RATINGS_DOWN = bench.Outage("app:ratings-v1", "sigkill-app", started=11.0, recovered=13.0)
RATINGS_FAILURE = bench.FailedHop("reviews-v2", "ratings", "Ratings service is currently unavailable")


def test_chaos_passes_when_every_failure_is_blamed_and_reports_it_per_action(tmp_path: Path) -> None:
    result = _result(tmp_path, "chaos", [_failure(11.5, 11.6, RATINGS_FAILURE)], [RATINGS_DOWN])
    assert result["passed"] and result["unexplained_failures"] == 0
    assert result["chaos"]["per_action"]["sigkill-app"] == {"done": 1, "failed_requests": 1, "in flight": 0,
                                                           "down": 1, "settling": 0}
    report = bench.render_report(result)
    assert "(PASS)" in report and "| sigkill-app | 1 | 1 | 0 | 1 | 0 |" in report
    assert "- 1 × reviews-v2 -> ratings: Ratings service is currently unavailable" in report
    json.dumps(result)  # the JSON result is serializable


def test_chaos_fails_on_an_unexplained_failure_and_lists_it_with_the_events_near_it(tmp_path: Path) -> None:
    details = bench.FailedHop("productpage-v1", "details", "details answered 503")
    result = _result(tmp_path, "chaos", [_failure(12.0, 12.1, details)], [RATINGS_DOWN])
    assert not result["passed"] and result["unexplained_failures"] == 1
    report = bench.render_report(result)
    assert "(FAIL)" in report and "Unexplained failures: 1" in report
    assert "productpage-v1 -> details: details answered 503" in report
    assert "near: fault 'sigkill-app ratings-v1 (restart in 2s)' -1.0s" in report


def test_a_soak_fails_on_any_failed_request_and_on_rss_growth(tmp_path: Path) -> None:
    flat = bench.RssSummary("control-plane", 1, 10, 60.0, 60.0, 60.5, 0.5, 0.8, 1.0, "flat")
    grew = bench.RssSummary("sidecar-a/proxy", 2, 10, 50.0, 60.0, 70.0, 20.0, 40.0, 80.0, "grew")
    clean = _result(tmp_path, "soak", [], [], [flat])
    assert clean["passed"] and "Verdict: PASS (0 failed requests, RSS flat)" in bench.render_report(clean)
    # a soak blames nobody: its one control-plane restart may not fail a request
    failed = _result(tmp_path, "soak", [_failure(11.5, 11.6, RATINGS_FAILURE)], [], [flat])
    assert not failed["passed"]
    assert "Verdict: FAIL (1 failed requests" in bench.render_report(failed)
    leaking = _result(tmp_path, "soak", [], [], [flat, grew])
    assert not leaking["passed"] and leaking["rss_grew"] == ["sidecar-a/proxy"]
    assert "RSS grew in sidecar-a/proxy" in bench.render_report(leaking)


def test_the_json_keeps_every_unexplained_failure_and_a_sample_of_the_explained_ones() -> None:
    failures = [{"started": float(i), "attributed_to": "" if i % 50 == 0 else "sigkill-app app:x at +0.0s"}
                for i in range(1000)]
    stored = bench._stored_failures(failures)
    assert sum(1 for f in stored if not f["attributed_to"]) == 20
    assert sum(1 for f in stored if f["attributed_to"]) == bench.MAX_STORED_EXPLAINED_FAILURES
    assert [f["started"] for f in stored] == sorted(f["started"] for f in stored)
