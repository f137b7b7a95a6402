"""deploy/prometheus and deploy/grafana: the rules pass ``promtool check rules`` and their unit tests
(``promtool test rules``, a firing and a quiet case per alert), every metric the rules and the dashboard
read exists in a running ``ff serve``'s /metrics, and a real Prometheus (Debian's ``prometheus``)
scrapes that server and evaluates the rules on it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from registry.store import Store
from tests.ffserve.serve_testkit import Server, free_port, start_server
from tests.models import add_model

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "ff-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "ff-rules-test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "ff-serve-dashboard.json"
METRIC = re.compile(r"\bff:[a-z0-9_:]+")


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} is not installed (apt-get install prometheus)")
    return exe


def _rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_promtool_checks_the_rules() -> None:
    proc = subprocess.run([_tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in proc.stdout


def test_promtool_unit_tests_pass() -> None:
    proc = subprocess.run(
        [_tool("promtool"), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    assert alerts == {
        "FFQueueSaturated", "FFHigh5xxRate", "FFTimeToFirstTokenSlow", "FFModelLoadFailed",
        "FFMemoryBudgetNearlyFull",
    }
    cases = [c for t in yaml.safe_load(RULE_TESTS.read_text())["tests"] for c in t["alert_rule_test"]]
    firing = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert firing == alerts and quiet == alerts


def _sample_names(exposition: str) -> set[str]:
    """Every sample name a /metrics page has or will have: its samples, and for each family declared
    without samples yet (a labelled metric no request has touched) the names of its samples."""
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            family = family.removesuffix("_total")  # prometheus_client declares counters with it
            names.update(family + s for s in suffixes.get(kind, ("",)))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def _used_names() -> set[str]:
    recorded = {r["record"] for r in _rules() if "record" in r}
    exprs = [r["expr"] for r in _rules()]
    exprs += [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in METRIC.findall(e)}
    return used - recorded


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("promhome")
    add_model(Store(home / "store"), "tiny:latest", {"q4_1": smollm2_gguf}, params={"temperature": 0.0})
    logs = tmp_path_factory.mktemp("promlogs")
    with start_server(home, logs, FF_MAX_QUEUE="4", FF_MAX_MEMORY="4GiB") as s:
        ai = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        ai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        assert httpx.get(s.url + "/api/tags/nope").status_code == 404
        yield s


def test_the_metrics_the_rules_and_dashboard_read_exist(served: Server) -> None:
    text = httpx.get(served.url + "/metrics").text
    used = _used_names()
    assert {"ff:num_requests_waiting", "ff:model_load_failures_total", "ff:http_responses_total"} <= used
    assert used <= _sample_names(text), used - _sample_names(text)
    # the series the alerts need are there once the server has served a request
    assert 'ff:http_responses_total{code="200"}' in text and 'ff:http_responses_total{code="404"}' in text
    assert "ff:time_to_first_token_seconds_bucket{" in text and 'model_name="tiny:latest"' in text
    assert "ff:queue_capacity 4.0" in text and "ff:memory_budget_bytes 4.294967296e+09" in text


def _query(prom: str, q: str) -> list[dict[str, Any]]:
    r = httpx.get(prom + "/api/v1/query", params={"query": q}, timeout=5)
    r.raise_for_status()
    result: list[dict[str, Any]] = r.json()["data"]["result"]
    return result


def test_prometheus_scrapes_ff_serve_and_evaluates_the_rules(served: Server, tmp_path: Path) -> None:
    port = free_port()
    target = served.url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "ff", "static_configs": [{"targets": [target]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [
            _tool("prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    prom = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            try:
                up = _query(prom, 'up{job="ff"}')
                saturation = _query(prom, "ff:queue_saturation:ratio")
                if up and up[0]["value"][1] == "1" and saturation:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-3000:]
            time.sleep(0.5)
        assert saturation[0]["metric"]["model_name"] == "tiny:latest"
        assert float(saturation[0]["value"][1]) == 0.0
        assert _query(prom, "ff:queue_capacity")[0]["value"][1] == "4"
        assert _query(prom, 'ff:http_responses_total{code="404"}')[0]["value"][1] == "1"
        groups = httpx.get(prom + "/api/v1/rules").json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) == len(_rules()) and all(r["health"] == "ok" for r in rules), rules
        firing = [r["name"] for r in rules if r.get("state") == "firing"]
        assert firing == []  # an idle, healthy server
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
