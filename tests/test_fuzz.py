"""schemathesis against the served OpenAPI spec: whatever it sends, the server never answers 5xx."""

import re
import subprocess
import sys

import pytest

from shared.cli.processes import child_env
from tests.sse import bearer


@pytest.mark.timeout(150)
def test_no_input_makes_the_api_fail_with_a_5xx(stack, base_url, tmp_path):
    token = bearer("fuzzer", "fuzzco")["Authorization"]
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{base_url}/api/openapi.json",
               "--header", f"Authorization: {token}", "--checks", "not_a_server_error",
               "--max-examples", "20", "--max-time", "40", "--workers", "1", "--seed", "6",
               "--request-timeout", "10", "--suppress-health-check", "all",
               "--report", "junit", "--report-dir", str(tmp_path)]
    result = subprocess.run(command, env=child_env(stack.env), capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    summary = re.search(r"(\d+) generated, (\d+) passed", output)
    assert summary and summary.group(1) == summary.group(2), output[-6000:]
    assert not re.search(r'" 5\d\d ', stack.log("web")), "the access log shows a 5xx"
