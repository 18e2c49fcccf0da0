"""The seed article's scenario, run as a user runs it: worker and beat started from its folder."""
import subprocess
import sys
from pathlib import Path

import pytest

SCENARIO = Path(__file__).resolve().parents[2] / "shared" / "scenario"

pytestmark = pytest.mark.skipif(not (SCENARIO / "run_scenario.py").exists(),
                                reason=f"the shared scenario is not beside this checkout ({SCENARIO})")


@pytest.mark.timeout(120)
def test_run_scenario_passes_every_check(procs, redis_server):
    env = procs.env(extra={"MINIQUE_BROKER_URL": redis_server.url(0), "MINIQUE_RESULT_BACKEND": redis_server.url(1),
                           "PYTHONDONTWRITEBYTECODE": "1"})
    env["PYTHONPATH"] = ""
    procs.worker("-Q", "default,priority_high", app="tasks", cwd=SCENARIO, env=env)
    procs.beat(app="tasks", cwd=SCENARIO, env=env)
    out = subprocess.run([sys.executable, "run_scenario.py"], cwd=SCENARIO, env=env, capture_output=True, text=True,
                         timeout=100)
    print(out.stdout, out.stderr)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all checks passed" in out.stdout
